"""The ``appliance`` command.

Subcommands live in their own modules and are imported only when used (``LAZY_COMMANDS``), so
``appliance status`` starts fast and the installer core never pulls in torch or onnxruntime.
Every ApplianceError is printed as its message and fix, and exits with its own code:

- 0 success, 1 general failure, 2 invalid input (answers file, flag, pipeline file),
  3 preflight failed, 4 runtime unavailable, 5 a service did not become healthy,
  130 interrupted (Ctrl-C; the next ``up`` completes the work).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import click

from appliance import __version__
from appliance.errors import ApplianceError

# name -> "module:attribute"; each module owns one command or group.
LAZY_COMMANDS: dict[str, str] = {
    "init": "appliance.cli.stack_cmds:init_cmd",
    "preflight": "appliance.cli.stack_cmds:preflight_cmd",
    "plan": "appliance.cli.stack_cmds:plan_cmd",
    "up": "appliance.cli.stack_cmds:up_cmd",
    "down": "appliance.cli.stack_cmds:down_cmd",
    "status": "appliance.cli.stack_cmds:status_cmd",
    "logs": "appliance.cli.stack_cmds:logs_cmd",
    "restart": "appliance.cli.stack_cmds:restart_cmd",
    "secrets": "appliance.cli.secrets_cmds:secrets_group",
    "schema": "appliance.cli.stack_cmds:schema_cmd",
    "data": "appliance.cli.data_cmds:data_group",
    "train": "appliance.cli.train_cmd:train_cmd",
    "models": "appliance.cli.model_cmds:models_group",
    "serve": "appliance.cli.serve_cmd:serve_cmd",
    "pipeline": "appliance.cli.pipeline_cmds:pipeline_group",
    "tui": "appliance.cli.tui_cmd:tui_cmd",
    "images": "appliance.cli.image_cmds:images_group",
    "bundle": "appliance.cli.bundle_cmds:bundle_group",
    "backup": "appliance.cli.backup_cmds:backup_group",
    "restore": "appliance.cli.backup_cmds:restore_cmd",
    "upgrade": "appliance.cli.upgrade_cmds:upgrade_cmd",
    "rollback": "appliance.cli.upgrade_cmds:rollback_cmd",
    "cluster": "appliance.cli.cluster_cmds:cluster_group",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in LAZY_COMMANDS.items() if _module_exists(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target):
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


def _module_exists(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=LazyGroup, invoke_without_command=True)
@click.option(
    "--answers",
    "answers_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="APPLIANCE_ANSWERS",
    help="Answers file (default: ./appliance.yaml when it exists, else built-in defaults).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="APPLIANCE_STATE_DIR",
    help="State directory (data, logs, secrets). Env: APPLIANCE_STATE_DIR.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="appliance")
@click.pass_context
def cli(ctx: click.Context, answers_path: Path | None, state_dir: Path | None, debug: bool) -> None:
    """MLOps Appliance: provision and run the whole ML lifecycle on one machine."""
    ctx.ensure_object(dict)
    ctx.obj["answers_path"] = answers_path
    ctx.obj["state_dir"] = state_dir
    ctx.obj["debug"] = debug
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty() and _module_exists(LAZY_COMMANDS["tui"]):
            ctx.invoke(cli.get_command(ctx, "tui"))  # type: ignore[arg-type]
        else:
            click.echo(ctx.get_help())


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI and turn ApplianceErrors into messages and exit codes."""
    try:
        return cli.main(args=argv, prog_name="appliance", standalone_mode=False)
    except ApplianceError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        if "--debug" in (argv or sys.argv):
            raise
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to complete the work", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)

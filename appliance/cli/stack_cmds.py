"""Stack commands: init, preflight, plan, up, down, status, logs, restart, schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from appliance.answers import Answers
from appliance.answers_file import DEFAULT_NAME, answers_schema, render_answers
from appliance.cli.common import app_context
from appliance.cli.progress import ProgressPrinter
from appliance.engine import Engine
from appliance.errors import ApplianceError, PreflightError
from appliance.state_lock import pass_over_exec, state_lock

if TYPE_CHECKING:
    from appliance.bundle.manifest import Manifest

MARK = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[red]FAIL[/]"}
HEALTH = {"healthy": "green", "starting": "yellow", "unhealthy": "red", "stopped": "dim"}
console = Console(highlight=False)
progress_console = Console(stderr=True, highlight=False)


def engine() -> Engine:
    return Engine(app_context())


@click.command("init")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path(DEFAULT_NAME),
    show_default=True,
    help="Where to write the answers file.",
)
@click.option("--profile", type=click.Choice(["lab", "edge", "custom"]), default="lab", show_default=True)
@click.option(
    "--runtime", type=click.Choice(["local", "podman", "docker"]), default="local", show_default=True
)
@click.option(
    "--tls/--no-tls",
    default=False,
    show_default=True,
    help="Front the stack with the TLS gateway (tls.enabled).",
)
@click.option(
    "--cluster",
    "with_cluster",
    is_flag=True,
    help="Add a cluster section with this host as the control host (docs/cluster.md).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_cmd(output: Path, profile: str, runtime: str, tls: bool, with_cluster: bool, force: bool) -> None:
    """Write a commented answers file with every default spelled out."""
    if output.exists() and not force:
        raise ApplianceError(
            f"{output} already exists", fix="pass --force to overwrite it, or -o another path"
        )
    choices: dict[str, object] = {"profile": profile, "runtime": runtime, "tls": {"enabled": tls}}
    if with_cluster:  # other hosts reach the services: they listen on every address
        from appliance.cluster.inventory import this_host

        choices |= {"bind_address": "0.0.0.0", "cluster": {"hosts": [this_host()]}}
    output.write_text(render_answers(Answers.model_validate(choices)))
    command = "cluster up" if with_cluster else "up"
    click.echo(f"wrote {output}; edit it, then run: appliance --answers {output} {command}")


@click.command("schema")
@click.option("--check", "check_path", type=click.Path(path_type=Path), help="Fail if this file is stale.")
def schema_cmd(check_path: Path | None) -> None:
    """Print the answers file's JSON schema (or check a committed copy)."""
    text = json.dumps(answers_schema(), indent=2, sort_keys=True) + "\n"
    if check_path is None:
        click.echo(text, nl=False)
    elif not check_path.exists() or check_path.read_text() != text:
        raise ApplianceError(f"{check_path} is stale", fix=f"run: appliance schema > {check_path}")


@click.command("preflight")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def preflight_cmd(as_json: bool) -> None:
    """Check this host against the chosen stack (exit 3 on a blocking failure)."""
    from appliance.preflight import as_json as to_json

    checks = engine().preflight()
    if as_json:
        click.echo(json.dumps(to_json(checks), indent=2))
    else:
        for c in checks:
            console.print(
                f"{MARK[c.status]} {c.name:<24} {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else "")
            )
    failures = [c for c in checks if c.status == "fail"]
    if failures:
        if as_json:
            sys.exit(PreflightError.exit_code)
        raise PreflightError([(c.name, c.detail, c.fix) for c in failures])


@click.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_cmd(as_json: bool) -> None:
    """Show what `up` would change."""
    the_plan = engine().plan()
    click.echo(json.dumps(the_plan.to_dict(), indent=2) if as_json else the_plan.render())


@click.command("up")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    help="Install from this offline bundle first (verify, load images, wheelhouse); no network used.",
)
@click.option(
    "--load-images",
    type=click.Choice(["podman", "docker"]),
    help="With --bundle on the local runtime: load the bundle's images into this engine as well.",
)
def up_cmd(quiet: bool, bundle: Path | None, load_images: str | None) -> None:
    """Bring the stack up (or up to date). Safe to run again at any time.

    The state directory's lock is held from before the bundle's images and wheels are installed
    to the end of ``up`` (across the restart into the new code), so two runs never interleave; the
    bundle is verified before the lock, so a refused bundle leaves no trace."""
    if load_images and bundle is None:
        raise click.UsageError("--load-images needs --bundle")
    say = _bundle_progress(quiet)
    verified = None
    if bundle is not None:
        from appliance.bundle.install import verify_bundle

        verified = verify_bundle(bundle, say)
    with state_lock(app_context().state_dir) as lock_fd:
        if bundle is not None and _install_bundle(bundle, load_images, say, verified):
            pass_over_exec(lock_fd)
            _up_in_new_process(quiet)
        eng = engine()
        result = eng.up(None if quiet else ProgressPrinter())
        status = eng.status()
    _print_status(status)
    if not result.changed:
        click.echo("stack already up to date (0 actions)")


def _bundle_progress(quiet: bool) -> Callable[[str], None]:
    started = time.monotonic()

    def say(line: str) -> None:
        if not quiet:
            elapsed = time.monotonic() - started
            progress_console.print(f"[{elapsed:6.1f}s] bundle  {escape(line)}", style="cyan", soft_wrap=True)

    return say


def _install_bundle(
    bundle: Path, load_images: str | None, say: Callable[[str], None], verified: Manifest | None
) -> bool:
    """Install from ``bundle`` before ``up``; True when pip changed the running virtualenv."""
    from appliance.bundle.install import install_from_bundle

    runtime = app_context().answers.runtime
    engines: list[str] = [runtime] if runtime in ("podman", "docker") else []
    if load_images and load_images not in engines:
        engines.append(load_images)
    started = time.monotonic()
    done = install_from_bundle(bundle, engines, say, verified)
    say(f"installed from {bundle.name} in {time.monotonic() - started:.1f}s; bringing the stack up")
    return done.wheels_installed


def _up_in_new_process(quiet: bool) -> None:
    """Run the rest of ``up`` with the code pip just installed, not the one imported here."""
    obj = click.get_current_context().find_root().obj
    script = Path(sys.executable).parent / "appliance"
    argv = [str(script)] if script.exists() else [sys.executable, "-c", "import appliance.cli as c; c.main()"]
    if obj.get("answers_path"):
        argv += ["--answers", str(obj["answers_path"])]
    if obj.get("state_dir"):
        argv += ["--state-dir", str(obj["state_dir"])]
    if obj.get("debug"):
        argv.append("--debug")
    argv += ["up", *(["--quiet"] if quiet else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


@click.command("down")
@click.option("--purge", is_flag=True, help="Also delete all data, logs and secrets.")
@click.option("--yes", is_flag=True, help="Do not ask before --purge.")
def down_cmd(purge: bool, yes: bool) -> None:
    """Stop every service; data stay (unless --purge)."""
    eng = engine()
    if purge and not yes:
        click.confirm(f"delete {eng.ctx.state_dir} with every dataset, model and secret?", abort=True)
    eng.down(ProgressPrinter())
    if purge:
        eng.purge()
        click.echo(f"removed {eng.ctx.state_dir}")


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(as_json: bool) -> None:
    """Health, URL, pid, uptime and memory (PSS of its processes) of every service."""
    from appliance.footprint import add_memory
    from appliance.workloads.serving.replica_status import replicas_status

    eng = engine()
    status = add_memory(eng.status(), eng.runtime)
    serving = status["services"].get("serving", {})
    replicas = replicas_status(eng.ctx, serving.get("health") in ("healthy", "starting"))
    if replicas is not None:
        status["serving_replicas"] = replicas
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)


def _print_status(status: dict) -> None:
    from appliance.footprint import human

    table = Table("service", "health", "pid", "uptime", "memory", "url", box=None)
    for name, s in status["services"].items():
        uptime = f"{s['uptime_seconds']:.0f}s" if s["uptime_seconds"] is not None else "-"
        color = HEALTH.get(s["health"], "")
        memory = human(s.get("memory_bytes"))
        pid = str(s["pid"] or "-")
        table.add_row(name, f"[{color}]{s['health']}[/]", pid, uptime, memory, s["url"] or "")
    console.print(table)
    if status.get("memory_total_bytes"):
        console.print(f"memory of the running services: {human(status['memory_total_bytes'])}")
    if status.get("serving_replicas"):
        from appliance.workloads.serving.replica_status import describe

        console.print(describe(status["serving_replicas"]), markup=False)


@click.command("logs")
@click.argument("service")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines to show.")
def logs_cmd(service: str, follow: bool, lines: int) -> None:
    """Print a service's log."""
    path = engine().log_file(service)
    if not os.path.exists(path):
        raise ApplianceError(f"{service} has not written a log yet ({path})", fix="run `appliance up` first")
    args = ["tail", "-n", str(lines)] + (["-F"] if follow else []) + [path]
    try:
        subprocess.run(args, check=False)
    except KeyboardInterrupt:
        pass


@click.command("restart")
@click.argument("service")
def restart_cmd(service: str) -> None:
    """Restart one service."""
    engine().restart(service)
    click.echo(f"restarted {service}")

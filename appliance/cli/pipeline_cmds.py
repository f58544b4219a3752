"""``appliance pipeline``: run a pipeline by hand, list runs, show one run, check a pipeline file.

Runs started here and by the controller land in the same records (STATE/controller/runs.db) and
take the same per-model lock, so ``pipeline runs`` shows both and a manual run never overlaps a
drift-triggered one. Everything heavy (the runner, mlflow) is imported inside the commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.cli.common import app_context
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.pipelines.runner import Event

STATE_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "running": "cyan",
    "retrying": "yellow",
    "skipped": "magenta",
    "started": "cyan",
}
LOG_TAIL_LINES = 20


class PipelineRunFailed(ApplianceError):
    """A run finished in the failed state; the message carries its error and where to look."""


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"{item!r} is not NAME=VALUE (e.g. --param dataset=wine)", param_hint="--param"
            )
        params[key.strip()] = value
    return params


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _state_text(run: dict[str, Any], state_dir: Path) -> str:
    """``running, held by pid N`` while the lock is held; the recorded state otherwise."""
    from appliance.pipelines.locks import holder

    if run["state"] != "running":
        return str(run["state"])
    owner = holder(state_dir, run["model"])
    if owner and owner.run_id == run["id"]:
        return f"running, held by pid {owner.pid}"
    return "running (holder gone: marked failed at the next run or controller start)"


def _render_event(event: Event) -> None:
    colour = STATE_COLOURS.get(event.state, "")
    where = event.step or "pipeline"
    attempt = f" (attempt {event.attempt}/{event.attempts})" if event.attempts > 1 else ""
    message = f": {event.message}" if event.message else ""
    stamp = time.strftime("%H:%M:%S")
    click.echo(
        f"[{stamp}] {where:<14} " + click.style(event.state, fg=colour or None) + f"{attempt}{message}",
        err=True,
    )


@click.group("pipeline")
def pipeline_group() -> None:
    """Retraining pipelines: run one, list runs, show a run, validate a pipeline file."""


@pipeline_group.command("run")
@click.argument("name")
@click.option("--model", help="Model to work on (default: the pipeline's own `model`).")
@click.option(
    "--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a parameter (repeatable)."
)
@click.option(
    "--pipelines-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="APPLIANCE_PIPELINES_DIR",
    help="Folder searched for NAME.yaml before the built-in pipelines (default: STATE/pipelines).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the finished run record as JSON.")
def run_cmd(
    name: str, model: str | None, params: tuple[str, ...], pipelines_dir: Path | None, as_json: bool
) -> None:
    """Run pipeline NAME (a name or a path to a .yaml or .pipeline file) now, in the foreground."""
    from appliance.names import check_name
    from appliance.pipelines.loader import find_pipeline, load_pipeline, search_dirs, user_pipelines_dir
    from appliance.pipelines.model import DATASET_PARAMETER
    from appliance.pipelines.runner import PipelineRunner
    from appliance.workloads.binding import resolved_entries, run_params

    overrides = _parse_params(params)
    if not name.endswith((".yaml", ".yml", ".pipeline")):
        check_name(name, "pipeline name")
    if model is not None:
        check_name(model, "model name")
    if DATASET_PARAMETER in overrides:
        check_name(overrides[DATASET_PARAMETER], "dataset name")
    app = app_context()
    path = find_pipeline(name, search_dirs(pipelines_dir or user_pipelines_dir(app.state_dir)))
    pipeline = load_pipeline(path)
    # The model's own dataset, target and parameters from the answers (models list), as the
    # controller's runs get them; a dataset named here by hand must agree with the binding.
    bindings = {entry.name: entry for entry in resolved_entries(app.answers)}
    chosen = model or pipeline.model
    values = run_params(chosen, pipeline.model, pipeline.parameters, bindings, overrides, explicit=True)
    runner = PipelineRunner(app.state_dir, app.connection_env(), on_event=_render_event)
    record = runner.run(
        pipeline, path, model=chosen, params=values, trigger="manual", binding=bindings.get(chosen)
    )
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
    if record["state"] != "succeeded":
        raise PipelineRunFailed(
            f"pipeline run {record['id']} failed: {record['error']}",
            fix=f"read `appliance pipeline show {record['id']}` for the step's log, correct it, run again",
        )
    if not as_json:
        version = f", version {record['version']}" if record["version"] else ""
        click.echo(
            f"run {record['id']} succeeded in {_duration(record['duration'])}: {record['outcome']}{version}"
        )


@pipeline_group.command("runs")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="How many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def runs_cmd(limit: int, as_json: bool) -> None:
    """Recent pipeline runs (from the CLI and from the controller), newest first."""
    from appliance.pipelines.records import RunStore

    state_dir = app_context().state_dir
    runs = RunStore(state_dir).recent(limit=limit)
    for run in runs:
        run["status"] = _state_text(run, state_dir)
    if as_json:
        click.echo(json.dumps(runs, indent=2, default=str))
        return
    if not runs:
        click.echo("no pipeline runs yet: start one with `appliance pipeline run retrain`")
        return
    click.echo(
        f"{'RUN':<23} {'PIPELINE':<12} {'MODEL':<16} {'TRIGGER':<7} {'STARTED':<19} {'TOOK':>7}  STATE"
    )
    for run in runs:
        outcome = f" / {run['outcome']}" if run["outcome"] not in (None, run["state"]) else ""
        version = f" (v{run['version']})" if run["version"] else ""
        click.echo(
            f"{run['id']:<23} {run['pipeline']:<12} {run['model']:<16} {run['trigger']:<7} "
            f"{_when(run['started']):<19} {_duration(run['duration']):>7}  {run['status']}{outcome}{version}"
        )


@pipeline_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record (with the log tail) as JSON.")
def show_cmd(run_id: str, as_json: bool) -> None:
    """One run: its steps, and the log tail of the step that failed (or is running)."""
    from appliance.pipelines.process import tail
    from appliance.pipelines.records import RunStore

    state_dir = app_context().state_dir
    run = RunStore(state_dir).get(run_id)
    if run is None:
        raise ApplianceError(
            f"no single run matches {run_id!r}", fix="list runs with `appliance pipeline runs`"
        )
    run["status"] = _state_text(run, state_dir)
    focus = next((s for s in run["steps"] if s["state"] in ("failed", "running")), None)
    run["log_step"] = focus["name"] if focus else None
    run["log_tail"] = tail(Path(focus["log_path"]), LOG_TAIL_LINES) if focus and focus["log_path"] else ""
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return
    click.echo(
        f"run       {run['id']}  ({run['pipeline']} for model {run['model']}, trigger {run['trigger']})"
    )
    click.echo(f"state     {run['status']}")
    click.echo(f"started   {_when(run['started'])}   took {_duration(run['duration'])}")
    for label, key in (
        ("outcome", "outcome"),
        ("version", "version"),
        ("error", "error"),
        ("mlflow", "mlflow_run_id"),
    ):
        if run[key]:
            click.echo(f"{label:<9} {run[key]}")
    click.echo(f"params    {json.dumps(run['params'])}")
    click.echo(f"workdir   {run['workdir']}")
    click.echo("steps:")
    for step in run["steps"]:
        took = _duration(step["finished"] - step["started"]) if step["finished"] and step["started"] else "-"
        error = f"  {step['error']}" if step["error"] else ""
        click.echo(
            f"  {step['name']:<14} {step['state']:<10} attempts {step['attempts']:<2} {took:>7}{error}"
        )
    if run["log_tail"]:
        click.echo(
            f"last {LOG_TAIL_LINES} log lines of {run['log_step']} ({focus['log_path'] if focus else ''}):"
        )
        for line in run["log_tail"].splitlines():
            click.echo(f"  | {line}")


@pipeline_group.command("validate")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def validate_cmd(file: Path) -> None:
    """Check a pipeline file (every problem listed with its line), without running anything."""
    from appliance.pipelines.loader import load_pipeline

    pipeline = load_pipeline(file)
    steps = ", ".join(s.name for s in pipeline.steps)
    click.echo(f"{file}: ok, pipeline {pipeline.name!r} for model {pipeline.model!r}: {steps}")


@pipeline_group.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), help="Write here instead of stdout."
)
def export_cmd(file: Path, output: Path | None) -> None:
    """Print (or write) a pipeline drawn in the workbench (FILE.pipeline) in the YAML form."""
    from appliance.pipelines.elyra import export_text

    text = export_text(file, output)
    if output is None:
        click.echo(text, nl=False)
        return
    if not output.parent.is_dir():
        raise click.BadParameter(f"folder {output.parent} does not exist", param_hint="--output")
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(text)
    partial.replace(output)
    click.echo(f"wrote {output}")

"""``appliance cluster ...``: the stack over the hosts of the answers' ``cluster`` section."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from appliance.cli.common import app_context

if TYPE_CHECKING:
    from appliance.cluster.progress import ServiceEvent
    from appliance.cluster.run import HostResult

LIMIT = click.option("--limit", "limit", multiple=True, help="Only these hosts (repeat for several).")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _progress(host: str, status: str, task: str) -> None:
    if status != "skipped":
        click.echo(f"  {host:<16} {status:<11} {task}", err=True)


def _service(event: ServiceEvent) -> None:
    """A service's change of state, in the task lines' columns, its name after ``service``."""
    tally = f"({event.ready} of {event.total} ready)"
    click.echo(f"  {event.host:<16} {event.state:<11} service {event.service} {tally}", err=True)


def _report(action: str, as_json: bool, limit: tuple[str, ...] = (), diff: bool = False) -> None:
    from appliance.cluster.engine import run
    from appliance.cluster.run import ClusterPreflightError, ClusterRunError
    from appliance.cluster.run import as_json as to_json

    started = time.monotonic()
    try:
        results = run(
            app_context(), action, None if as_json else _progress, list(limit), None if as_json else _service
        )
    except (ClusterRunError, ClusterPreflightError) as err:
        if as_json:  # the per-host results are still data on stdout; the message and exit code follow
            click.echo(json.dumps(to_json(err.results), indent=2))
        elif diff:  # what the hosts that got through would change
            _print_diffs(err.results)
        raise
    if as_json:
        click.echo(json.dumps(to_json(results), indent=2))
        return
    click.echo(f"{'host':<16} {'state':<12} {'ok':>4} {'changed':>8} {'failed':>7} {'unreachable':>12}")
    for host, r in sorted(results.items()):
        click.echo(f"{host:<16} {r.state:<12} {r.ok:>4} {r.changed:>8} {r.failed:>7} {r.unreachable:>12}")
    click.echo(f"cluster {action}: {len(results)} hosts in {time.monotonic() - started:.0f} s")
    if action == "plan":
        _print_service_plans(results)
    if diff:
        _print_diffs(results)


def _print_service_plans(results: dict[str, HostResult]) -> None:
    """What each host's services would do (``appliance.cluster.host_plan``), as the one-host
    ``appliance plan`` prints its own."""
    from appliance.cluster.host_plan import render_host_plans
    from appliance.plan import Action, Plan

    plans = {
        host: Plan(tuple(Action(**action) for action in r.services))  # type: ignore[arg-type]
        for host, r in results.items()
    }
    click.echo("\n" + render_host_plans(plans))


def _print_diffs(results: dict[str, HostResult]) -> None:
    """Each host's file changes after the table: plan's ``--diff``."""
    for host, r in sorted(results.items()):
        click.echo(
            f"\n=== {host}: " + (f"{len(r.diffs)} file change(s)" if r.diffs else "no file change to show")
        )
        for text in r.diffs:
            click.echo(text, nl=False)


@click.group("cluster")
def cluster_group() -> None:
    """The same stack over several hosts (the answers' cluster section), through Ansible."""


@cluster_group.command("preflight")
@JSON
def preflight_cmd(as_json: bool) -> None:
    """Check every host can run its part (exit 3 when one cannot, 4 when one is unreachable)."""
    _report("preflight", as_json)


@cluster_group.command("plan")
@JSON
@LIMIT
@click.option(
    "--diff",
    is_flag=True,
    help="Also print each file a host would change, as a unified diff (secrets are never shown).",
)
def plan_cmd(as_json: bool, limit: tuple[str, ...], diff: bool) -> None:
    """What `cluster up` would change on each host (Ansible's check and diff mode; --json always
    holds the diffs)."""
    _report("plan", as_json, limit, diff)


@cluster_group.command("up")
@JSON
@LIMIT
def up_cmd(as_json: bool, limit: tuple[str, ...]) -> None:
    """Bring every host to the desired state; a second run changes nothing."""
    _report("up", as_json, limit)


@cluster_group.command("down")
@JSON
@LIMIT
def down_cmd(as_json: bool, limit: tuple[str, ...]) -> None:
    """Stop every appliance unit on every host, model servers drained first (data stay)."""
    _report("down", as_json, limit)


@cluster_group.command("status")
@JSON
def status_cmd(as_json: bool) -> None:
    """Each host's appliance units and their state."""
    from appliance.cluster.engine import status

    found = status(app_context())
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    for host, units in sorted(found.items()):
        listed = ", ".join(f"{name} {state}" for name, state in sorted(units.items())) or "no appliance units"
        click.echo(f"{host:<16} {listed}")


def _check_trainer_args(args: list[str]) -> None:
    """The trainer's own parser on this machine first, so a wrong argument fails before any host runs."""
    import contextlib
    import io

    from appliance.workloads.trainer.__main__ import parser

    if "--script" in args or any(a.startswith("--script=") for a in args):
        raise click.UsageError("--script trains in one process: run `appliance train --script ...` instead")
    if "--workdir" in args or any(a.startswith("--workdir=") for a in args):
        raise click.UsageError("--workdir is a folder on one host: leave it out of a job across hosts")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = parser().parse_args(["run", *args])
    except SystemExit:
        problem = err.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
        raise click.UsageError(f"trainer arguments: {problem[0]}") from None
    if not parsed.dataset:
        raise click.UsageError("cluster train needs --dataset NAME (see `appliance data ls`)")


def _train_progress(host: str, state: str, detail: str) -> None:
    click.echo(f"  {host:<16} {state:<11} {detail}", err=True)


@cluster_group.command("train", context_settings={"ignore_unknown_options": True})
@click.option(
    "--hosts", type=click.IntRange(min=1), default=1, show_default=True, help="Train workers to use."
)
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    help="Processes per host (default: cluster.train.nproc_per_node; one per GPU on GPU hosts).",
)
@click.option("--timeout", type=click.IntRange(min=60), default=3600, show_default=True, help="Seconds.")
@JSON
@click.argument("trainer_args", nargs=-1, type=click.UNPROCESSED)
def train_cmd(
    hosts: int, nproc_per_node: int | None, timeout: int, as_json: bool, trainer_args: tuple[str, ...]
) -> None:
    """One training job on N train workers x M processes under torchrun (rendezvous on the first).

    The other arguments are `appliance train`'s (--dataset NAME, --epochs, --seed, ...); rank 0
    logs to MLflow and registers. docs/training.md, "Across hosts"."""
    from appliance.cluster.train import launch

    args = list(trainer_args)
    _check_trainer_args(args)
    job = launch(app_context(), hosts, args, nproc_per_node, timeout, None if as_json else _train_progress)
    if as_json:
        click.echo(json.dumps(job.as_json(), indent=2, default=str))
        return
    for host, run in job.hosts.items():
        click.echo(f"{host:<16} node {run.node}  {run.state:<8} {run.seconds:>6.1f} s")
    summary = job.summary or {}
    if summary:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in summary.get("metrics", {}).items())
        click.echo(
            f"{summary.get('model_name')} v{summary.get('version')}: {summary.get('decision')} ({metrics}); "
            f"{len(job.hosts)} host(s) x {job.nproc_per_node} process(es) in {job.seconds:.0f} s"
        )
    click.echo(json.dumps(summary, default=str))

"""``appliance cluster ...``: the stack over the hosts of the answers' ``cluster`` section."""

from __future__ import annotations

import json
import time

import click

from appliance.cli.common import app_context

LIMIT = click.option("--limit", "limit", multiple=True, help="Only these hosts (repeat for several).")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _progress(host: str, status: str, task: str) -> None:
    if status != "skipped":
        click.echo(f"  {host:<16} {status:<11} {task}", err=True)


def _report(action: str, as_json: bool, limit: tuple[str, ...] = ()) -> None:
    from appliance.cluster.engine import run
    from appliance.cluster.run import as_json as to_json

    started = time.monotonic()
    results = run(app_context(), action, None if as_json else _progress, list(limit))
    if as_json:
        click.echo(json.dumps(to_json(results), indent=2))
        return
    click.echo(f"{'host':<16} {'state':<12} {'ok':>4} {'changed':>8} {'failed':>7} {'unreachable':>12}")
    for host, r in sorted(results.items()):
        click.echo(f"{host:<16} {r.state:<12} {r.ok:>4} {r.changed:>8} {r.failed:>7} {r.unreachable:>12}")
    click.echo(f"cluster {action}: {len(results)} hosts in {time.monotonic() - started:.0f} s")


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
def plan_cmd(as_json: bool, limit: tuple[str, ...]) -> None:
    """What `cluster up` would change on each host (Ansible's check and diff mode)."""
    _report("plan", as_json, limit)


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

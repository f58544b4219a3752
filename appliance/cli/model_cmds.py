"""``appliance models list|promote|rollback|import``: the registry's versions and the champion alias.

Promotion by hand and rollback are recorded as tags (on the version and on the registered
model's champion history), so the registry always says who moved ``champion`` and why.
"""

from __future__ import annotations

import os
import time

import click

from appliance.cli.import_cmd import import_cmd


def _connect() -> None:
    """Point MLflow at the stack's server, as its writer account (promote and rollback move the
    champion alias), and fail fast with a fix when it is down or refuses the account."""
    from appliance.cli.common import app_context
    from appliance.workloads.trainer import tracking

    os.environ.update(app_context().mlflow_env())
    tracking.check_reachable()


@click.group("models")
def models_group() -> None:
    """Registered models, their versions and aliases (champion, challenger)."""


@click.command("list")
@click.argument("name", required=False)
def list_cmd(name: str | None) -> None:
    """List versions with aliases, ranking metric and creation time."""
    _connect()
    from appliance.workloads.trainer import registry

    rows = registry.list_versions(name)
    if not rows:
        click.echo("no registered models yet: run `appliance train --dataset NAME`")
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(
        f"{'NAME':<{width}} {'VERSION':>7}  {'ALIASES':<20} {'METRIC':<18} {'DECISION':<18} CREATED (UTC)"
    )
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created"] / 1000))
        metric = f"{r['metric']}={r['score']}" if r["metric"] else "-"
        aliases = ",".join(r["aliases"]) or "-"
        decision = r["decision"] or "-"
        click.echo(
            f"{r['name']:<{width}} {r['version']:>7}  {aliases:<20} {metric:<18} {decision:<18} {created}"
        )


@click.command("promote")
@click.argument("name")
@click.argument("version")
def promote_cmd(name: str, version: str) -> None:
    """Make VERSION the champion of NAME, whatever the scores say (recorded as a tag)."""
    _connect()
    from appliance.workloads.trainer import registry

    previous = registry.champion_version(name)
    registry.promote(name, version)
    click.echo(f"{name}: champion v{previous or '-'} -> v{version} (manual promotion)")


@click.command("rollback")
@click.argument("name")
def rollback_cmd(name: str) -> None:
    """Move the champion alias of NAME back to the previous champion."""
    _connect()
    from appliance.workloads.trainer import registry

    current, previous = registry.rollback(name)
    click.echo(f"{name}: champion v{current} -> v{previous} (rolled back)")


models_group.add_command(list_cmd)
models_group.add_command(promote_cmd)
models_group.add_command(rollback_cmd)
models_group.add_command(import_cmd)

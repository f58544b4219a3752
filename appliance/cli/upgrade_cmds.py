"""``appliance upgrade`` and ``appliance rollback`` (docs/upgrade.md).

``upgrade`` installs the target release beside the running one (``STATE/releases/VERSION``),
prints every component that changes, asks (``--yes`` skips), then backs up, applies and verifies,
rolling back by itself on any failure. ``--dry-run`` stops after the list and writes nothing but
the installed release.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from appliance.cli.common import app_context
from appliance.errors import ApplianceError

FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


def _say(line: str) -> None:
    click.echo(line, err=True)


@click.command("upgrade")
@click.option("--to", "to_version", help="An installed release (STATE/releases/VERSION).")
@click.option("--bundle", type=FILE, help="A release tarball (`git archive` of the repository) to install.")
@click.option(
    "--current-bundle",
    type=FILE,
    help="The tarball of the version the stack runs now, when it was not brought up from a release.",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; back up and apply nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before applying.")
def upgrade_cmd(
    to_version: str | None, bundle: Path | None, current_bundle: Path | None, dry_run: bool, yes: bool
) -> None:
    """Upgrade the stack to this appliance's version (or --to / --bundle): show what changes,
    back up, apply service by service with health gates; on any failure roll back by itself."""
    from appliance import __version__
    from appliance.state_version import read_stamp
    from appliance.upgrade import releases
    from appliance.upgrade.journal import require_settled
    from appliance.upgrade.run import current_release, plan_upgrade, upgrade

    if to_version and bundle:
        raise click.UsageError("give --to or --bundle, not both")
    ctx = app_context()
    state = ctx.state_dir
    if not state.is_dir():
        raise ApplianceError(f"no stack in {state}", fix="pass --state-dir, or `appliance up` first")
    require_settled(state)
    if current_bundle is not None:
        installed = releases.install_bundle(state, current_bundle)
        running = str((read_stamp(state) or {}).get("appliance_version", installed.version))
        if running != installed.version:
            shutil.rmtree(installed.root)
            raise ApplianceError(
                f"{current_bundle} is appliance {installed.version}, but {state} was written by {running}",
                fix=f"give the tarball of {running}, the version the stack runs now",
            )
        if releases.active(state) is None:
            releases.activate(state, installed)
        _say(f"installed the running version's release {installed.version}")
    now = current_release(ctx)  # before installing anything: without it there is no way back
    if bundle is not None:
        target = releases.install_bundle(state, bundle)
    elif to_version is not None:
        target = releases.get(state, to_version)
    elif now.version == __version__:
        raise ApplianceError(f"the stack already runs appliance {__version__}", fix="nothing to do")
    else:
        target = releases.install_running(state)
    _say(f"release {target.version} installed in {target.root}")
    plan = plan_upgrade(ctx, target)
    click.echo(f"upgrade {plan.from_release.version} -> {plan.to_release.version}:")
    for change in plan.changes:
        click.echo("  " + change.line())
    if dry_run:
        return
    if not yes and not (os.isatty(0) and click.confirm("back up and upgrade now?", default=False)):
        raise ApplianceError("nothing was changed", fix="pass --yes to upgrade without asking")
    outcome = upgrade(ctx, plan, _say)
    click.echo(
        f"upgraded {outcome.from_version} -> {outcome.to_version} in {outcome.seconds:.1f}s; "
        f"rollback point: {outcome.backup} (`appliance rollback`)"
    )


@click.command("rollback")
@click.option("--yes", is_flag=True, help="Do not ask (the data written since the upgrade are lost).")
def rollback_cmd(yes: bool) -> None:
    """Return to the version before the last upgrade, with the data of the backup taken just
    before it; also finishes an upgrade that was interrupted halfway."""
    from appliance.upgrade.journal import load
    from appliance.upgrade.run import rollback

    ctx = app_context()
    journal = load(ctx.state_dir)
    if journal is not None and journal.phase == "done" and not yes:
        question = (
            f"return to {journal.from_version} with the data of {journal.backup}? "
            "What was written since the upgrade is lost"
        )
        if not (os.isatty(0) and click.confirm(question, default=False)):
            raise ApplianceError("nothing was changed", fix="pass --yes to roll back without asking")
    done = rollback(ctx, _say)
    click.echo(f"rolled back to {done.from_version} with the data of {done.backup}")

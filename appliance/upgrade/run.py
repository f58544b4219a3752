"""``appliance upgrade`` and ``appliance rollback``: the steps, each recorded before it runs.

Upgrade, from the release the stack runs (``releases.active``) to another installed one:

1. show what changes (``changes.diff``) and ask;
2. journal ``backing-up``: ``appliance backup`` into ``STATE/backups/`` (the rollback point);
3. journal ``applying``: when the schema changes, MLflow stopped and its ``db upgrade`` run
   (checked to reach the new head); point ``current`` at the new release and run *its*
   ``appliance up``, which recreates each changed service in dependency order, each gated on its
   health check; then every service must report healthy;
4. journal ``done``.

Any failure in 3 rolls back by itself: the new release's ``down``, ``restore`` of the backup
(every part: MLflow, data, records, secrets), ``current`` back to the previous release and its
``up``; the error names what failed and says that the previous version is back. ``rollback``
does the same by hand after a ``done`` upgrade (data written since the upgrade are lost: the
backup is from before it) or to finish an interrupted one.

The releases' own CLIs run as subprocesses (each renders its own stack with its own code); they
get ``APPLIANCE_UPGRADE_STEP=1`` so their ``up`` does not refuse the unfinished journal.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.backup.snapshot import alembic_revision
from appliance.context import AppContext
from appliance.errors import ApplianceError
from appliance.state_version import STAMP_FILE
from appliance.upgrade import journal as jr
from appliance.upgrade.changes import Change, diff, facts_of
from appliance.upgrade.releases import Release, activate, active, get, installed

Say = Callable[[str], None]
STEP_TIMEOUT_S = 1800


class UpgradeFailedError(ApplianceError):
    """The upgrade failed and was rolled back (or the rollback failed too)."""

    exit_code = 5


@dataclass(frozen=True)
class Plan:
    """What an upgrade will do, before it does anything."""

    from_release: Release
    to_release: Release
    changes: list[Change]


@dataclass(frozen=True)
class Outcome:
    from_version: str
    to_version: str
    backup: str
    seconds: float


def _globals(ctx: AppContext) -> list[str]:
    args = ["--state-dir", str(ctx.state_dir)]
    if ctx.answers_path is not None:
        args += ["--answers", str(Path(ctx.answers_path).resolve())]
    return args


def _run_release_program(cmd: list[str], what: str, cwd: Path | None = None, step: bool = False) -> str:
    """Run a release's program with this Python's search path cleared (the release has its own
    virtualenv); its stdout, or an error naming ``what`` with its output's tail."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if step:
        env[jr.STEP_ENV] = "1"
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ApplianceError(f"{what} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def _run_cli(release: Release, ctx: AppContext, *args: str) -> str:
    """Run one of ``release``'s commands on this state; raise with its output's tail on failure."""
    return _run_release_program(
        release.cli(*_globals(ctx), *args),
        f"`appliance {' '.join(args)}` of release {release.version}",
        cwd=ctx.state_dir,
        step=True,
    )


def unhealthy(status_json: str) -> list[str]:
    """Services of a ``status --json`` answer that are neither healthy nor a finished job."""
    services = json.loads(status_json).get("services", {})
    return sorted(
        f"{name} ({info.get('health')}: {info.get('detail')})"
        for name, info in services.items()
        if info.get("health") != "healthy" and info.get("state") != "done"
    )


def _database_schema(ctx: AppContext) -> str | None:
    db = ctx.state_dir / "mlflow" / "mlflow.db"
    return alembic_revision(db) if db.is_file() else None


def current_release(ctx: AppContext) -> Release:
    release = active(ctx.state_dir)
    if release is None:
        raise ApplianceError(
            f"the stack in {ctx.state_dir} does not run from an installed release, so an upgrade "
            "would have no version to roll back to",
            fix="install the version it runs now first: `appliance upgrade --current-bundle FILE.tar.gz` "
            "(a `git archive` of that version)",
        )
    return release


def plan_upgrade(ctx: AppContext, to: Release) -> Plan:
    """What upgrading to ``to`` changes; reads only."""
    jr.require_settled(ctx.state_dir)
    if ctx.answers.runtime != "local":
        raise ApplianceError(
            f"`appliance upgrade` moves stacks on the local runtime; this one runs on {ctx.answers.runtime}, "
            "whose services run the code baked into their images",
            fix="take a backup (`appliance backup`), then bring the new version's images up with "
            "`appliance up --bundle NEW.tar` (docs/containers.md); `appliance restore` returns to the backup",
        )
    frm = current_release(ctx)
    if frm.version == to.version:
        raise ApplianceError(f"the stack already runs appliance {to.version}", fix="nothing to do")
    return Plan(frm, to, diff(facts_of(frm), facts_of(to), _database_schema(ctx)))


def upgrade(ctx: AppContext, plan: Plan, say: Say) -> Outcome:
    """Back up, apply ``plan.to_release``, verify; on any failure roll back and raise."""
    with jr.hold(ctx.state_dir):
        return _upgrade(ctx, plan, say)


def _upgrade(ctx: AppContext, plan: Plan, say: Say) -> Outcome:
    from appliance.backup.create import create_backup

    started = time.monotonic()
    frm, to = plan.from_release, plan.to_release
    journal = jr.start(ctx.state_dir, frm.version, to.version)
    say(f"backup: taking the rollback point of {frm.version}")
    try:
        backup = create_backup(ctx)
    except BaseException as err:
        journal.move(ctx.state_dir, "aborted", f"backup failed: {err}")
        raise
    journal.backup = backup.path
    say(f"backup: {backup.path} ({backup.archive_bytes / 1e6:.1f} MB, {backup.seconds:.1f}s)")
    journal.move(ctx.state_dir, "applying")
    try:
        _apply(ctx, plan, say)
    except (Exception, KeyboardInterrupt) as err:
        what = str(err).strip() or type(err).__name__
        say(f"upgrade to {to.version} failed, rolling back to {frm.version}: {what}")
        journal.move(ctx.state_dir, "rolling-back", what)
        _roll_back(ctx, journal, say)
        raise UpgradeFailedError(
            f"upgrade to {to.version} failed and was rolled back: {frm.version} runs again with the "
            f"data of {journal.backup}.\nWhat failed: {what}",
            fix="correct the cause (the service's log: `appliance logs NAME`), then upgrade again",
        ) from err
    journal.move(ctx.state_dir, "done")
    return Outcome(frm.version, to.version, backup.path, time.monotonic() - started)


def _apply(ctx: AppContext, plan: Plan, say: Say) -> None:
    to = plan.to_release
    migration = next((c for c in plan.changes if c.kind == "mlflow-schema"), None)
    if migration is not None and (ctx.state_dir / "mlflow" / "mlflow.db").is_file():
        stop_tracking_server(ctx, say)
        migrate_tracking_db(to, ctx.state_dir / "mlflow" / "mlflow.db", migration.after, say)
    activate(ctx.state_dir, to)
    say(f"up: release {to.version}, service by service, each gated on its health check")
    _run_cli(to, ctx, "up")
    bad = unhealthy(_run_cli(to, ctx, "status", "--json"))
    if bad:
        raise ApplianceError(f"not healthy after the upgrade: {', '.join(bad)}")


def stop_tracking_server(ctx: AppContext, say: Say) -> None:
    """Stop the running MLflow before its database is migrated: the old server would go on
    writing with the old schema's statements into tables the migration is changing. The new
    release's ``up`` starts MLflow again right after; the model server keeps serving the model it
    has loaded meanwhile, and only MLflow's own clients (training, the workbench) wait."""
    from appliance.runtimes import get_runtime

    runtime = get_runtime(ctx)
    seen = runtime.observe().get("mlflow")
    if seen is not None and seen.running:
        say("mlflow: stopping the tracking server for the schema migration")
        runtime.stop("mlflow")


def migrate_tracking_db(release: Release, db: Path, head: str | None, say: Say) -> None:
    """``mlflow db upgrade`` with ``release``'s MLflow, then check the database is at ``head``
    (the newest revision that MLflow knows): a migration that exits 0 but stops short would
    otherwise surface only as MLflow refusing to start. The upgrade's backup holds the database
    as it was before, so a failure here rolls back to it."""
    before = alembic_revision(db)
    say(f"mlflow: migrating the tracking database's schema {before} -> {head}")
    _run_release_program(
        [str(release.bin / "mlflow"), "db", "upgrade", f"sqlite:///{db}"],
        f"MLflow's schema migration (`mlflow db upgrade`) of {db}",
    )
    after = alembic_revision(db)
    if head is not None and after != head:
        raise ApplianceError(f"MLflow's schema migration left {db} at revision {after}, not {head}")
    say(f"mlflow: the tracking database is at schema {after}")


def _roll_back(ctx: AppContext, journal: jr.Journal, say: Say) -> None:
    from appliance.backup.restore import restore

    state = ctx.state_dir
    try:
        frm = get(state, journal.from_version)
        if journal.backup is None or not Path(journal.backup).is_file():
            raise ApplianceError(f"the upgrade's backup {journal.backup} is missing")
        running = active(state) or installed(state).get(journal.to_version) or frm
        say(f"rollback: stopping release {running.version}'s stack")
        _run_cli(running, ctx, "down")
        say(f"rollback: restoring {journal.backup}")
        restore(Path(journal.backup), state, confirm=lambda _q: True)
        (state / STAMP_FILE).unlink(missing_ok=True)  # its up stamps the previous version again
        activate(state, frm)
        say(f"rollback: up with release {frm.version}")
        _run_cli(frm, ctx, "up")
    except (Exception, KeyboardInterrupt) as err:
        journal.move(state, "rollback-failed", f"{journal.error}; then the rollback failed: {err}")
        raise UpgradeFailedError(
            f"the rollback to {journal.from_version} failed too: {err}",
            fix=f"run `appliance rollback` again; the data before the upgrade are in {journal.backup}",
        ) from err
    journal.move(state, "rolled-back")


def rollback(ctx: AppContext, say: Say) -> jr.Journal:
    """Return to the version (and data) before the last upgrade, or finish an interrupted one."""
    with jr.hold(ctx.state_dir):
        return _rollback(ctx, say)


def _rollback(ctx: AppContext, say: Say) -> jr.Journal:
    journal = jr.load(ctx.state_dir)
    if journal is None or journal.phase not in ("done", *jr.UNFINISHED):
        raise ApplianceError(
            f"no upgrade to roll back in {ctx.state_dir}"
            + (f" (the last one is {journal.phase})" if journal else ""),
            fix="`appliance backup list` and `appliance restore` return to any backup",
        )
    if journal.phase != "rolling-back":
        journal.move(ctx.state_dir, "rolling-back", journal.error or "rollback asked for")
    _roll_back(ctx, journal, say)
    return journal

"""Scheduled backups, taken by the controller (``backup:`` in the answers file).

``up`` writes ``backup.json`` into the controller's config folder (``backup_config`` below): the
cron expression, how many archives to keep, where to put them, how many schedule periods may pass
without a good backup before the ``BackupTooOld`` alert, and the answers themselves (a backup
holds them, and needs them to find the stack's parts). The controller's cron thread calls
``BackupJob.run``: one ``appliance backup`` (in this process, streamed; a run still going when
the next tick comes is skipped, not queued), then the oldest archives beyond ``retention`` are
deleted from the destination. Each outcome is kept in ``STATE/backups/schedule.json``, so the
metrics survive a controller restart:

- ``appliance_backup_last_success_timestamp_seconds``: when the last good backup finished (the
  controller's start when none has yet, so a schedule that never succeeds still alerts);
- ``appliance_backup_last_size_bytes``, ``appliance_backup_last_duration_seconds``;
- ``appliance_backup_runs_total{outcome="success"|"failure"}``;
- ``appliance_backup_stale_after_seconds``: the alert's threshold (periods x the schedule's
  period), exported so the alert rule needs no copy of the schedule.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)
RECORD = "schedule.json"
ARCHIVE_PREFIX = "appliance-backup-"


@dataclass(frozen=True)
class BackupPlan:
    """What ``backup.json`` says."""

    schedule: str
    retention: int
    to: str | None
    stale_after_periods: float
    answers: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> BackupPlan | None:
        """None when the file says no schedule."""
        data = json.loads(path.read_text())
        if not data.get("schedule"):
            return None
        return cls(
            str(data["schedule"]),
            int(data.get("retention", 7)),
            data.get("to") or None,
            float(data.get("stale_after_periods", 2)),
            dict(data.get("answers") or {}),
        )


def backup_config(ctx: Any, services: Any) -> str:
    """The controller's ``backup.json`` (a config file generator: see config_files.py). Without a
    schedule it says only that, so the controller's config hash follows no other answer."""
    settings = ctx.answers.backup
    if not settings.schedule:  # only the schedule: another answer changing restarts nothing
        return json.dumps({"schedule": None})
    answers = ctx.answers.model_dump(mode="json", exclude_none=True)
    body = {
        "schedule": settings.schedule,
        "retention": settings.retention,
        "to": settings.to,
        "stale_after_periods": settings.stale_after_periods,
        "answers": answers | {"state_dir": str(ctx.state_dir)},
    }
    return json.dumps(body, indent=1, sort_keys=True)


def period_seconds(expression: str, at: datetime | None = None) -> float:
    """The time between two fires of ``expression`` after ``at`` (the schedule's period)."""
    from appliance.workloads.controller.schedule import next_fire

    first = next_fire(expression, at or datetime.now(UTC))
    return (next_fire(expression, first) - first).total_seconds()


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete the oldest archives in ``folder`` beyond the newest ``keep``; returns the deleted.
    Archive names carry their UTC time, so name order is age order; other files stay."""
    archives = sorted(
        (p for p in folder.glob(f"{ARCHIVE_PREFIX}*") if p.is_file() and not p.name.endswith(".partial")),
        key=lambda p: p.name,
        reverse=True,
    )
    gone = archives[keep:]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def prune_s3(client: Any, uri: str, keep: int) -> list[str]:
    """The same for archives under ``s3://BUCKET/PREFIX``."""
    from appliance.backup.remote import split

    bucket, prefix = split(uri)
    names: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].rsplit("/", 1)[-1].startswith(ARCHIVE_PREFIX):
                names.append(obj["Key"])
    gone = sorted(names, key=lambda k: k.rsplit("/", 1)[-1], reverse=True)[keep:]
    for key in gone:
        client.delete_object(Bucket=bucket, Key=key)
    return [f"s3://{bucket}/{key}" for key in gone]


@dataclass
class Outcome:
    ok: bool
    finished: float
    seconds: float
    size: int = 0
    path: str | None = None
    error: str | None = None


Backup = Callable[[], tuple[str, int]]
"""Takes one backup; returns (where, archive bytes)."""


class BackupJob:
    """One schedule's runs, their record and their metrics."""

    def __init__(
        self,
        state_dir: Path,
        plan: BackupPlan,
        backup: Backup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.plan = plan
        self.clock = clock
        self.started = clock()
        self.backup = backup or self._create
        self.record_file = state_dir / "backups" / RECORD
        self._lock = threading.Lock()
        self.stale_after = plan.stale_after_periods * period_seconds(plan.schedule)

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> Outcome | None:
        """Take one backup and prune; None when the previous run still goes (skipped)."""
        if not self._lock.acquire(blocking=False):
            log.warning("scheduled backup skipped: the previous one is still running")
            return None
        try:
            return self._run()
        finally:
            self._lock.release()

    def _run(self) -> Outcome:
        began = time.monotonic()
        try:
            where, size = self.backup()
        except Exception as err:  # recorded and counted; the schedule goes on
            log.exception("scheduled backup failed")
            outcome = Outcome(False, self.clock(), time.monotonic() - began, error=str(err)[-500:])
        else:
            outcome = Outcome(True, self.clock(), time.monotonic() - began, size, where)
            log.info("scheduled backup: %s (%d bytes, %.1fs)", where, size, outcome.seconds)
            self._prune()
        self._remember(outcome)
        return outcome

    def _context(self) -> Any:
        from appliance.answers import Answers
        from appliance.context import AppContext

        answers = Answers.model_validate(self.plan.answers)
        return AppContext.create(answers, None, self.state_dir)

    def _create(self) -> tuple[str, int]:
        from appliance.backup.create import create_backup

        result = create_backup(self._context(), self.plan.to)
        return result.path, result.archive_bytes

    def _prune(self) -> None:
        to = self.plan.to
        try:
            if to and to.startswith("s3://"):
                from appliance.backup.remote import client

                gone = prune_s3(client(self._context()), to, self.plan.retention)
            else:
                folder = Path(to) if to else self.state_dir / "backups"
                gone = [
                    str(p) for p in prune(folder if folder.is_dir() else folder.parent, self.plan.retention)
                ]
        except Exception:
            log.exception("pruning old backups failed")
            return
        for path in gone:
            log.info("pruned old backup %s", path)

    # -- the record --------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            data = {}
        return data

    def _remember(self, outcome: Outcome) -> None:
        data = self.record()
        data["successes"] = int(data.get("successes", 0)) + outcome.ok
        data["failures"] = int(data.get("failures", 0)) + (not outcome.ok)
        key = "last_success" if outcome.ok else "last_failure"
        data[key] = {
            "finished": outcome.finished,
            "seconds": round(outcome.seconds, 3),
            "bytes": outcome.size,
            "path": outcome.path,
            "error": outcome.error,
        }
        self.record_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.record_file.with_name(f".{RECORD}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.record_file)

    # -- metrics -------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        data = self.record()
        last = data.get("last_success") or {}

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            return family

        yield gauge(
            "appliance_backup_last_success_timestamp_seconds",
            "When the last good scheduled backup finished (the controller's start before any).",
            float(last.get("finished") or self.started),
        )
        yield gauge(
            "appliance_backup_last_size_bytes", "Archive size of the last good backup.", last.get("bytes", 0)
        )
        yield gauge(
            "appliance_backup_last_duration_seconds",
            "How long the last good backup took.",
            last.get("seconds", 0),
        )
        yield gauge(
            "appliance_backup_stale_after_seconds",
            "Age of the last good backup beyond which BackupTooOld fires.",
            self.stale_after,
        )
        runs = CounterMetricFamily(
            "appliance_backup_runs_total", "Scheduled backups by outcome.", labels=["outcome"]
        )
        runs.add_metric(["success"], int(data.get("successes", 0)))
        runs.add_metric(["failure"], int(data.get("failures", 0)))
        yield runs


def load_job(config: Path | None, state_dir: Path) -> BackupJob | None:
    """The controller's backup job from ``--backup-file``, or None without a schedule."""
    if config is None or not config.is_file():
        return None
    plan = BackupPlan.load(config)
    if plan is None:
        return None
    from appliance.workloads.controller.schedule import check_schedule

    check_schedule(plan.schedule)
    return BackupJob(state_dir, plan)


def start_backups(config: Path | None, state_dir: Path, registry: Any) -> Any:
    """The controller's hook: with a schedule in ``config``, register the metrics on ``registry``
    and start the cron thread (returned, to be stopped); else None."""
    job = load_job(config, state_dir)
    if job is None:
        return None
    from appliance.workloads.controller.schedule import Scheduler

    registry.register(job)

    def fire() -> None:
        job.run()

    scheduler = Scheduler(job.plan.schedule, fire)
    scheduler.name = "backup-scheduler"
    scheduler.start()
    log.info("scheduled backups: %s, keeping %d", job.plan.schedule, job.plan.retention)
    return scheduler

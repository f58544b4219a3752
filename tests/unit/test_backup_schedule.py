"""Scheduled backups: the schedule's period, retention pruning, the run record and its metrics."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.answers import Answers
from appliance.errors import ApplianceError
from appliance.workloads.controller.backups import (
    BackupJob,
    BackupPlan,
    backup_config,
    load_job,
    period_seconds,
    prune,
)


def plan(schedule: str = "0 2 * * *", retention: int = 2, to: str | None = None) -> BackupPlan:
    return BackupPlan(schedule, retention, to, 2.0, {})


def scrape(job: BackupJob) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(job)
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("appliance_backup"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_the_period_is_the_time_between_two_fires() -> None:
    assert period_seconds("0 2 * * *") == 86400
    assert period_seconds("*/5 * * * *") == 300
    assert period_seconds("0 3 * * 1") == 7 * 86400


def test_prune_keeps_the_newest_archives_and_nothing_else(tmp_path: Path) -> None:
    names = [f"appliance-backup-2026010{d}T020000Z.tar.gz" for d in range(1, 6)]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".appliance-backup-20260109T020000Z.tar.gz.host.1.partial").write_text("half")
    gone = prune(tmp_path, 2)
    assert sorted(p.name for p in gone) == names[:3]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [*names[3:], "notes.txt", ".appliance-backup-20260109T020000Z.tar.gz.host.1.partial"]
    )


def test_a_job_records_each_outcome_and_exports_it(tmp_path: Path) -> None:
    now = [1_000_000.0]
    results: list[object] = [("/b/one.tar.gz", 2048), RuntimeError("disk full"), ("/b/two.tar.gz", 4096)]

    def fake_backup() -> tuple[str, int]:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[return-value]

    job = BackupJob(tmp_path, plan(), fake_backup, clock=lambda: now[0])
    before = scrape(job)
    # before any backup the controller's start counts as the last success, so the alert can fire
    assert before["appliance_backup_last_success_timestamp_seconds"] == 1_000_000.0
    assert before["appliance_backup_stale_after_seconds"] == 2 * 86400
    assert before['appliance_backup_runs_total{outcome="success"}'] == 0

    now[0] = 1_000_100.0
    first = job.run()
    assert first is not None and first.ok and first.size == 2048
    now[0] = 1_000_200.0
    failed = job.run()
    assert failed is not None and not failed.ok and "disk full" in (failed.error or "")
    metrics = scrape(job)
    assert metrics["appliance_backup_last_success_timestamp_seconds"] == 1_000_100.0  # not the failure's
    assert metrics["appliance_backup_last_size_bytes"] == 2048
    assert metrics['appliance_backup_runs_total{outcome="success"}'] == 1
    assert metrics['appliance_backup_runs_total{outcome="failure"}'] == 1

    now[0] = 1_000_300.0
    job.run()
    # the record survives a restart: a new job (a restarted controller) reads it
    again = scrape(BackupJob(tmp_path, plan(), fake_backup, clock=lambda: 2_000_000.0))
    assert again["appliance_backup_last_success_timestamp_seconds"] == 1_000_300.0
    assert again["appliance_backup_last_size_bytes"] == 4096
    assert again['appliance_backup_runs_total{outcome="success"}'] == 2
    record = json.loads((tmp_path / "backups" / "schedule.json").read_text())
    assert record["last_failure"]["error"] == "disk full"


def test_a_run_while_the_last_one_goes_is_skipped(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow() -> tuple[str, int]:
        started.set()
        release.wait(10)
        return "/b/x.tar.gz", 1

    job = BackupJob(tmp_path, plan(), slow)
    thread = threading.Thread(target=job.run)
    thread.start()
    assert started.wait(10)
    assert job.run() is None
    release.set()
    thread.join(10)
    assert scrape(job)['appliance_backup_runs_total{outcome="success"}'] == 1


def test_a_good_backup_prunes_the_destination_to_the_retention(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    count = [0]

    def fake_backup() -> tuple[str, int]:
        count[0] += 1
        path = dest / f"appliance-backup-2026010{count[0]}T020000Z.tar.gz"
        path.write_text("x")
        return str(path), 1

    job = BackupJob(tmp_path, plan(retention=2, to=str(dest)), fake_backup)
    for _ in range(4):
        job.run()
    assert sorted(p.name for p in dest.iterdir()) == [
        "appliance-backup-20260103T020000Z.tar.gz",
        "appliance-backup-20260104T020000Z.tar.gz",
    ]


def test_the_config_file_carries_the_answers_and_the_schedule(tmp_path: Path) -> None:
    answers = Answers.model_validate({"backup": {"schedule": "*/5 * * * *", "retention": 3}})
    ctx = SimpleNamespace(answers=answers, state_dir=tmp_path)
    config = tmp_path / "backup.json"
    config.write_text(backup_config(ctx, {}))
    job = load_job(config, tmp_path)
    assert job is not None
    assert (job.plan.schedule, job.plan.retention, job.plan.to) == ("*/5 * * * *", 3, None)
    assert Answers.model_validate(job.plan.answers).backup.retention == 3
    assert job.plan.answers["state_dir"] == str(tmp_path)
    assert job.stale_after == 2 * 300
    # no schedule, no job
    config.write_text(backup_config(SimpleNamespace(answers=Answers(), state_dir=tmp_path), {}))
    assert load_job(config, tmp_path) is None
    assert load_job(None, tmp_path) is None


def test_a_bad_schedule_is_refused_when_the_controller_starts(tmp_path: Path) -> None:
    config = tmp_path / "backup.json"
    config.write_text(json.dumps({"schedule": "61 * * * *"}))
    with pytest.raises(ApplianceError, match="not a cron expression"):
        load_job(config, tmp_path)


def test_the_stack_gives_the_controller_its_schedule_and_only_that_without_one(tmp_path: Path) -> None:
    from appliance.context import AppContext
    from appliance.render import render_stack
    from appliance.stack import RenderedService

    def controller(**data: object) -> RenderedService:
        context = AppContext.create(Answers.model_validate(data), None, tmp_path / "state")
        return render_stack(context)["controller"]

    plain = controller()
    scheduled = controller(backup={"schedule": "0 2 * * *", "to": "/mnt/backups/"})
    for svc in (plain, scheduled):
        command = svc.command
        assert command[command.index("--backup-file") + 1].endswith("/controller/backup.json")
    assert json.loads(plain.files["backup.json"]) == {"schedule": None}
    body = json.loads(scheduled.files["backup.json"])
    assert (body["schedule"], body["to"], body["retention"]) == ("0 2 * * *", "/mnt/backups/", 7)
    # another answer changes nothing for a controller without a schedule
    assert controller(health_timeout_seconds=99).config_hash == plain.config_hash

"""The controller takes a scheduled backup by itself and exports it (a real controller process).

The controller runs on a state directory with a dataset and the answers' backup section (every
minute, keep one) in its ``backup.json``, as ``up`` writes it. Within about a minute an archive
appears that ``appliance backup verify`` accepts, an older archive left there is pruned, and
/metrics shows the success, its size and the alert's threshold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from appliance.answers import Answers
from appliance.workloads.controller.backups import backup_config
from tests.conftest import free_port, run_cli
from tests.integration._controller_fixtures import stop_process, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_controller_backs_up_on_its_schedule_and_prunes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "data" / "datasets" / "iris" / "v1").mkdir(parents=True)
    (state / "data" / "datasets" / "iris" / "v1" / "data.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    (state / "secrets").mkdir(mode=0o700)
    (state / "secrets" / "controller_webhook_token").write_text("token-for-the-test\n")
    backups = state / "backups"
    backups.mkdir()
    old = backups / "appliance-backup-20200101T000000Z.tar.gz"
    old.write_text("an old archive")
    answers = Answers.model_validate(
        {"object_store": {"kind": "filesystem"}, "backup": {"schedule": "* * * * *", "retention": 1}}
    )
    config = tmp_path / "backup.json"
    config.write_text(backup_config(SimpleNamespace(answers=answers, state_dir=state), {}))

    port = free_port()
    log = tmp_path / "controller.log"
    cmd = [sys.executable, "-m", "appliance.workloads.controller", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--state-dir", str(state), "--backup-file", str(config)]
    cmd += ["--webhook-token-file", str(state / "secrets" / "controller_webhook_token")]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("the controller", lambda: httpx.get(f"{url}/healthz").is_success, 60)
        started = time.monotonic()
        record_file = backups / "schedule.json"
        record = wait_for(
            f"a scheduled backup (controller log: {log})",
            lambda: record_file.is_file() and json.loads(record_file.read_text()).get("last_success"),
            150,
        )
        print(f"\nscheduled backup after {time.monotonic() - started:.1f} s: {record}")
        archive = Path(record["path"])
        assert archive.parent == backups and archive.stat().st_mode & 0o777 == 0o600
        assert not old.exists(), "the archive beyond the retention was not pruned"
        verify = run_cli("backup", "verify", str(archive))
        assert "ok" in verify.stdout
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("appliance_backup")
        }
        assert values["appliance_backup_last_size_bytes"] == archive.stat().st_size
        assert values['appliance_backup_runs_total{outcome="success"}'] >= 1
        assert values["appliance_backup_last_success_timestamp_seconds"] == pytest.approx(
            record["finished"], abs=1e-3
        )
        assert values["appliance_backup_stale_after_seconds"] == 2 * 60
    finally:
        stop_process(proc)

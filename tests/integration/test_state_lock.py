"""Two commands that change one state directory never interleave: while an `up` holds
STATE/.lock, a second `up` (or `down`) waits briefly, then fails naming the holder's pid; `plan`
and `status` still answer; once the first is done the second goes through. Real CLI processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.state_lock import lock_path
from tests.conftest import APPLIANCE, write_answers

pytestmark = pytest.mark.integration

# Prometheus, Alertmanager and node exporter alone: the quickest real stack to bring up.
SMALL = {
    "profile": "custom",
    "object_store": {"kind": "filesystem"},
    "components": {
        "object_store": False, "mlflow": False, "workbench": False, "serving": False,
        "controller": False, "dashboards": False, "monitoring": True,
    },
}  # fmt: skip


def cli(answers: Path, state: Path, *args: str) -> list[str]:
    return [APPLIANCE, "--answers", str(answers), "--state-dir", str(state), *args]


def env(wait: str = "1") -> dict[str, str]:
    return os.environ | {"APPLIANCE_LOCK_WAIT_SECONDS": wait}


def test_a_second_up_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    answers = write_answers(tmp_path / "appliance.yaml", **SMALL)
    state = tmp_path / "state"
    first = subprocess.Popen(
        cli(answers, state, "up", "--quiet"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not (lock_path(state).exists() and lock_path(state).read_text().strip()):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first up never took the lock"
            time.sleep(0.05)
        assert lock_path(state).read_text().strip() == str(first.pid)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, however fast this stack comes up
        try:
            started = time.monotonic()
            second = subprocess.run(
                cli(answers, state, "up"), capture_output=True, text=True, env=env(), timeout=60
            )
            took = time.monotonic() - started
            assert second.returncode == 1, second.stdout + second.stderr
            assert f"is being changed by pid {first.pid}" in second.stderr
            assert "fix: wait for it to finish" in second.stderr
            assert took < 30, "the second up waits briefly, not for the whole first run"
            down = subprocess.run(cli(answers, state, "down"), capture_output=True, text=True, env=env())
            assert down.returncode == 1 and f"pid {first.pid}" in down.stderr, down.stderr
            plan = subprocess.run(cli(answers, state, "plan"), capture_output=True, text=True, env=env())
            assert plan.returncode == 0, plan.stderr
        finally:
            first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, out + err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    again = subprocess.run(
        cli(answers, state, "up", "--quiet"), capture_output=True, text=True, env=env(), timeout=300
    )
    assert again.returncode == 0 and "0 actions" in again.stdout, again.stderr
    down = subprocess.run(cli(answers, state, "down"), capture_output=True, text=True, env=env(), timeout=300)
    assert down.returncode == 0, down.stderr


def test_the_lock_is_freed_when_its_holder_dies_and_read_only_commands_never_take_it(tmp_path: Path) -> None:
    answers = write_answers(tmp_path / "appliance.yaml", **SMALL)
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from appliance.state_lock import state_lock\n"
         "with state_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)", str(state)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = subprocess.run(cli(answers, state, "down"), capture_output=True, text=True, env=env("0.5"))
        assert refused.returncode == 1 and f"pid {holder.pid}" in refused.stderr, refused.stderr
        status = subprocess.run(
            cli(answers, state, "status", "--json"), capture_output=True, text=True, env=env()
        )
        assert status.returncode == 0, status.stderr
    finally:
        holder.kill()
        holder.wait(10)
    # SIGKILL: no clean-up ran, yet the kernel dropped the lock.
    down = subprocess.run(cli(answers, state, "down"), capture_output=True, text=True, env=env("0.5"))
    assert down.returncode == 0, down.stderr


def test_read_only_commands_do_not_create_the_lock(tmp_path: Path) -> None:
    answers = write_answers(tmp_path / "appliance.yaml", **SMALL)
    state = tmp_path / "state"
    state.mkdir()
    for args in (["plan"], ["status"], ["preflight"]):
        subprocess.run(cli(answers, state, *args), capture_output=True, text=True, env=env(), check=False)
    assert not lock_path(state).exists()

"""The wizard in a real terminal: tmux runs ``appliance tui``, keys are typed, the screen is read.
A lab install on the local runtime with the filesystem store, the serving and controller
components switched off and the TLS gateway on, chosen with keys only. Afterwards the stack must
be healthy according to ``appliance status`` and the answers file the wizard wrote must reproduce
the install: ``appliance --answers FILE plan --json`` plans zero actions (the file carries the
state dir).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.answers_file import load_answers
from tests.conftest import APPLIANCE, run_cli, write_answers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Terminal:
    """One tmux server of our own (``-L``), one 80x24 window."""

    def __init__(self, command: str) -> None:
        self.socket = f"appliance-tui-{uuid.uuid4().hex[:8]}"
        self.tmux("new-session", "-d", "-s", "wizard", "-x", "80", "-y", "24", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=False, timeout=30
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "wizard")

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", "-t", "wizard", key)
            time.sleep(0.3)

    def wait_for(self, *texts: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.5)
        raise AssertionError(f"{texts} not on screen after {timeout}s:\n{screen}")

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[dict[str, Path]]:
    found = {
        "seed": write_answers(tmp_path / "seed.yaml"),
        "out": tmp_path / "appliance.yaml",
        "state": tmp_path / "state",
    }
    yield found
    if found["out"].exists():
        run_cli("down", answers=found["out"], check=False, timeout=120)
    else:
        run_cli("down", answers=found["seed"], state=found["state"], check=False, timeout=120)


def test_lab_install_through_the_wizard(paths: dict[str, Path], tmp_path: Path) -> None:
    command = (
        f"TERM=xterm-256color {APPLIANCE} --answers {paths['seed']} --state-dir {paths['state']} "
        f"tui --answers-out {paths['out']} --refresh 2"
    )
    term = Terminal(command)
    try:
        term.wait_for("step 1/8", "lab", timeout=60)
        term.keys("C-n")
        term.wait_for("step 2/8", "you can continue", timeout=120)
        term.keys("C-n")
        term.wait_for("step 3/8", "Total RAM")
        term.keys("Tab", "Tab", "Tab", "Tab", "Space", "Tab", "Space")
        term.wait_for("▐ ▌ serving", "▐ ▌ controller")
        term.keys("C-n")
        term.wait_for("step 4/8")
        term.keys("Down", "Down", "Down", "Down", "Space")  # auto -> filesystem
        term.wait_for("▐●▌ filesystem")
        term.keys("C-n")
        term.wait_for("step 5/8", "GPUs detected: none")
        term.keys("C-n")
        screen = term.wait_for("step 6/8", "free (mlflow)")
        assert "BUSY" not in screen
        term.keys("Tab", "Space")  # TLS on: the gateway and its ports join the stack
        screen = term.wait_for("▐X▌ TLS gateway", "free (gateway: mlflow)")
        assert "BUSY" not in screen
        term.keys("C-n")
        term.wait_for("step 7/8", "▐●▌ This machine only")
        term.keys("C-n")
        term.wait_for("step 8/8", "profile: lab")
        term.keys("C-n")
        done = term.wait_for(
            "done · the stack is up", "appliance --answers $A", "Credentials", "healthy", timeout=480
        )
        (tmp_path / "done-screen.txt").write_text(done)
        print(done)
        assert "secrets show NAME" in done and "train --dataset breast_cancer" in done, done
        # serving is off: the gateway's address shown is MLflow's, over HTTPS
        assert f"https://127.0.0.1:{load_answers(paths['seed']).ports.gateway_mlflow}" in done, done
        assert f"A={paths['out']}" in "".join(line.strip() for line in done.splitlines())
        term.keys("d")
        dashboard = term.wait_for("status · profile lab", "healthy", "no pipeline runs yet", timeout=60)
        print(dashboard)
        term.keys("q")
    finally:
        term.close()

    written = load_answers(paths["out"])
    assert written.profile == "lab" and written.runtime == "local"
    assert written.object_store.kind == "filesystem"
    assert not written.components.serving and not written.components.controller
    assert written.tls.enabled
    assert written.state_dir == paths["state"].resolve()

    status = json.loads(run_cli("status", "--json", answers=paths["out"]).stdout)["services"]
    assert status and {s["health"] for s in status.values()} == {"healthy"}, status
    plan = json.loads(run_cli("plan", "--json", answers=paths["out"]).stdout)
    assert plan == {"actions": []}

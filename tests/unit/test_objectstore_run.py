"""The object store's wrapper (appliance.objectstore.run), around a real child process standing in
for ``weed``: SIGHUP reaches the store (which reads its guard again) and leaves both running;
SIGTERM still stops it within the grace."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
signal.signal(signal.SIGHUP, lambda *_: log.write("hup\\n"))
signal.signal(signal.SIGTERM, lambda *_: (log.write("term\\n"), sys.exit(0)))
log.write("ready\\n")
while True:
    time.sleep(0.05)
"""


def _wait_for(log: Path, lines: list[str], seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = log.read_text().split() if log.exists() else []
        if got == lines:
            return got
        time.sleep(0.05)
    return log.read_text().split() if log.exists() else []


def test_sighup_reaches_the_store_and_leaves_it_running_and_sigterm_still_stops_it(tmp_path: Path) -> None:
    log = tmp_path / "signals"
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "appliance.objectstore.run", "--grace", "5", "--",
         sys.executable, "-c", CHILD, str(log)],
    )  # fmt: skip
    try:
        assert _wait_for(log, ["ready"]) == ["ready"]
        wrapper.send_signal(signal.SIGHUP)
        assert _wait_for(log, ["ready", "hup"]) == ["ready", "hup"]
        wrapper.send_signal(signal.SIGHUP)
        assert _wait_for(log, ["ready", "hup", "hup"]) == ["ready", "hup", "hup"]
        assert wrapper.poll() is None, "a reload stopped the wrapper"
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(timeout=20) == 0
        assert log.read_text().split() == ["ready", "hup", "hup", "term"]
    finally:
        if wrapper.poll() is None:
            wrapper.kill()

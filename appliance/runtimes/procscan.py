"""Find and end the processes of a service by the marker in their environment.

A service's children (MLflow's uvicorn worker, Jupyter's kernels) inherit the marker variable, so
orphans left behind by a ``kill -9`` of the main process are still ours to find. The launcher ends
them before a service starts again (else the orphan keeps the port), and ``down`` ends any that
remain, so no process of the stack outlives it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARKER_VAR = "APPLIANCE_SERVICE_MARKER"


def pids_with_marker(prefix: str, exclude: set[int] | None = None, exact: bool = False) -> list[int]:
    """Processes whose ``APPLIANCE_SERVICE_MARKER`` is ``prefix`` (``exact``) or starts with it."""
    needle = f"{MARKER_VAR}={prefix}".encode()
    skip = exclude or set()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        items = environ.split(b"\0")
        if (needle in items) if exact else any(item.startswith(needle) for item in items):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def terminate(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.05)

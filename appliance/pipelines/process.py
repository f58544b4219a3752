"""One attempt of one step: a subprocess in its own session, killed whole past its timeout.

Each step gets a new session (process group) so a timeout, a cancel or a restart clean-up kills
everything it started (papermill's kernel, a trainer's data loader workers), not just the direct
child. Output goes to the step's log file, appended across attempts with a header per attempt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended: exit code (None when killed by us), and why it was killed."""

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def kill_group(pid: int, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_attempt(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout: float,
    header: str,
    on_start: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> AttemptResult:
    """Run ``argv`` once with output appended to ``log_path``; never raises for the command's sake."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"=== {header} ===\n$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as err:
            log.write(f"cannot start {argv[0]!r}: {err}\n".encode())
            return AttemptResult(exit_code=127)
        if on_start:
            on_start(proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            try:
                code = proc.wait(timeout=POLL_SECONDS)
            except BaseException as err:
                if not isinstance(err, subprocess.TimeoutExpired):
                    # Ctrl-C or a crash in the runner: the step's own session would outlive us.
                    kill_group(proc.pid, grace=1.0)
                    raise
                if cancel is not None and cancel.is_set():
                    kill_group(proc.pid)
                    proc.wait()
                    log.write(b"\n=== cancelled: the runner is stopping ===\n")
                    return AttemptResult(exit_code=None, cancelled=True)
                if time.monotonic() >= deadline:
                    kill_group(proc.pid)
                    proc.wait()
                    log.write(f"\n=== timed out after {timeout:g} s: killed ===\n".encode())
                    return AttemptResult(exit_code=None, timed_out=True)
                continue
            # The leader is gone; anything it left in its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            log.write(f"=== exit code {code} ===\n".encode())
            return AttemptResult(exit_code=code)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])

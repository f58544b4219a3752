"""One writer at a time on a state directory: an flock on ``STATE/.lock``.

Two ``up`` runs (or ``up`` and ``down``, or ``up --bundle``) on the same state directory would
interleave their runtime calls and their secret and certificate writes. Every command that
changes the stack takes this lock first; a second one waits a little (the first may be about to
finish) and then fails naming the holder's pid. Commands that only read (``plan``, ``status``,
``preflight``) neither take it nor create the file.

flock, not a pid file: the kernel drops the lock when its holder exits, however it exits, so a
crashed ``up`` never leaves the directory locked. The holder writes its pid into the file only
so the message can name it. ``up --bundle`` goes on in a fresh process (``os.execv``) after pip
changed the code: the lock's descriptor is passed on (``APPLIANCE_STATE_LOCK_FD``) so the
directory stays locked across the exec.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import ApplianceError

LOCK_FILE = ".lock"
WAIT_SECONDS = 10.0
"""How long a second writer waits for the first before it gives up (``APPLIANCE_LOCK_WAIT_SECONDS``)."""
INHERITED_FD = "APPLIANCE_STATE_LOCK_FD"
"""Set by a holder that execs itself: the descriptor of the lock it holds."""


class StateLockedError(ApplianceError):
    """Another command changes the same state directory now."""

    exit_code = 1

    def __init__(self, state_dir: Path, pid: int | None, waited: float) -> None:
        who = f"pid {pid}" if pid else "another process"
        self.pid = pid
        super().__init__(
            f"{state_dir} is being changed by {who} (`appliance up`, `down` or `up --bundle`); "
            f"waited {waited:.0f} s for it",
            fix=f"wait for it to finish (`ps -p {pid or 'PID'}` shows it), then run this command again; "
            "the lock is freed as soon as that process exits",
        )


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_FILE


def holder_pid(state_dir: Path) -> int | None:
    """The pid written by the current holder, if the file names one."""
    try:
        text = lock_path(state_dir).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("APPLIANCE_LOCK_WAIT_SECONDS", WAIT_SECONDS)))
    except ValueError:
        return WAIT_SECONDS


def _inherited(path: Path) -> int | None:
    """The descriptor a parent passed over exec, when it is this very lock file."""
    raw = os.environ.get(INHERITED_FD, "")
    if not raw.isdigit():
        return None
    fd = int(raw)
    try:
        same = os.fstat(fd)
        here = os.stat(path)
    except OSError:
        return None
    if (same.st_dev, same.st_ino) != (here.st_dev, here.st_ino):
        return None
    return fd


_held: dict[Path, int] = {}
"""Locks this process holds (state dir -> descriptor), so nested holders do not deadlock."""


@contextmanager
def state_lock(state_dir: Path, wait: float | None = None) -> Iterator[int]:
    """Hold ``STATE/.lock`` for the block (made 0700 with the state dir when absent); yields the
    descriptor. Raises StateLockedError when another process holds it longer than ``wait``."""
    key = state_dir.resolve()
    if key in _held:  # already held by this process (e.g. ``up --bundle`` then ``up``)
        yield _held[key]
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    path = lock_path(state_dir)
    fd = _inherited(path)
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        limit = _wait_seconds() if wait is None else wait
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if waited >= limit:
                    os.close(fd)
                    raise StateLockedError(state_dir, holder_pid(state_dir), waited) from None
                time.sleep(min(0.2, max(0.01, limit - waited)))
    os.environ.pop(INHERITED_FD, None)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = fd
    try:
        yield fd
    finally:
        _held.pop(key, None)
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def pass_over_exec(fd: int) -> None:
    """Keep the lock ``fd`` open across ``os.execv`` and tell the new process it holds it."""
    os.set_inheritable(fd, True)
    os.environ[INHERITED_FD] = str(fd)

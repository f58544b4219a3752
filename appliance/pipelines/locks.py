"""One pipeline run per model at a time, across processes: an flock on STATE/controller/locks/MODEL.lock.

flock (not lockf) because its locks belong to an open file, not to a process: the controller's
threads and the CLI conflict alike, and the kernel drops the lock when the holder dies, so a
crashed run can never leave a model locked. The holder writes its pid and run id into the file so
``pipeline runs`` can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.names import check_name, child_path


@dataclass(frozen=True)
class Holder:
    """Who holds a model's lock."""

    pid: int
    run_id: str


def lock_dir(state_dir: Path) -> Path:
    return state_dir / "controller" / "locks"


def lock_path(state_dir: Path, model: str) -> Path:
    """``locks/MODEL.lock``: the model name is checked (names.py) and the path kept in the folder,
    since names arrive from HTTP bodies and alert labels."""
    return child_path(lock_dir(state_dir), check_name(model, "model name"), ".lock")


class ModelLock:
    """The run lock of one model; ``acquire()`` never waits."""

    def __init__(self, state_dir: Path, model: str) -> None:
        self.model = check_name(model, "model name")
        self.path = lock_path(state_dir, model)
        self._fd: int | None = None

    def acquire(self, run_id: str) -> bool:
        """Take the lock for ``run_id``; False when another run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "run_id": run_id}).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held_here(self) -> bool:
        return self._fd is not None


def holder(state_dir: Path, model: str) -> Holder | None:
    """Who holds ``model``'s lock now, or None when nobody does (probed without keeping it)."""
    path = lock_path(state_dir, model)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(path.read_text() or "{}")
            except ValueError:
                info = {}
            return Holder(int(info.get("pid", 0)), str(info.get("run_id", "")))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)

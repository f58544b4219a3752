"""``STATE/upgrade.json``: where an upgrade stands, written before each step it starts.

Phases, and the only moves between them::

    backing-up -> applying -> done
        |            |          |
        v            v          v
      aborted    rolling-back -> rolled-back
                     |
                     v
                rollback-failed

``backing-up`` has changed nothing yet (an interrupted one is simply dropped); ``applying`` and
``rolling-back`` leave the stack between two versions, so the next command refuses to run on it
and ``appliance rollback`` finishes the way back. ``done`` keeps what ``appliance rollback`` needs
(the previous version and the backup taken before the upgrade).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from appliance.errors import ApplianceError

Phase = Literal["backing-up", "applying", "done", "aborted", "rolling-back", "rolled-back", "rollback-failed"]
JOURNAL = "upgrade.json"
MOVES: dict[str, frozenset[str]] = {
    "backing-up": frozenset({"applying", "aborted"}),
    "applying": frozenset({"done", "rolling-back"}),
    "done": frozenset({"rolling-back"}),
    "rolling-back": frozenset({"rolled-back", "rollback-failed"}),
    "rollback-failed": frozenset({"rolling-back"}),
    "aborted": frozenset(),
    "rolled-back": frozenset(),
}
STEP_ENV = "APPLIANCE_UPGRADE_STEP"
"""Set in the environment of the releases' own commands that an upgrade or rollback runs."""
UNFINISHED = frozenset({"applying", "rolling-back", "rollback-failed"})
"""Phases that leave the stack between two versions."""


class UpgradeInProgressError(ApplianceError):
    """The state directory is in the middle of an upgrade or a rollback."""

    exit_code = 1


@dataclass
class Journal:
    """One upgrade: from which release to which, its backup, its phase and what went wrong."""

    from_version: str
    to_version: str
    phase: Phase = "backing-up"
    backup: str | None = None
    error: str | None = None
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    history: list[list[str]] = field(default_factory=list)
    """``[phase, time]`` for each phase entered."""

    def move(self, state_dir: Path, phase: Phase, error: str | None = None) -> None:
        """Enter ``phase`` and write the journal (atomically) before the step runs."""
        if phase not in MOVES[self.phase]:
            raise ApplianceError(f"an upgrade cannot go from {self.phase} to {phase}")
        self.phase = phase
        if error is not None:
            self.error = error
        self.history.append([phase, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())])
        save(state_dir, self)


def path(state_dir: Path) -> Path:
    return state_dir / JOURNAL


def save(state_dir: Path, journal: Journal) -> None:
    target = path(state_dir)
    tmp = target.with_name(f".{JOURNAL}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(journal), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


def load(state_dir: Path) -> Journal | None:
    try:
        data = json.loads(path(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ApplianceError(
            f"{path(state_dir)} is unreadable ({err})",
            fix="look at it; remove it only if no upgrade was running",
        ) from err
    if not isinstance(data, dict) or data.get("phase") not in MOVES:
        raise ApplianceError(f"{path(state_dir)} names no known upgrade phase")
    return Journal(**{k: v for k, v in data.items() if k in Journal.__dataclass_fields__})


def start(state_dir: Path, from_version: str, to_version: str) -> Journal:
    """A new journal in ``backing-up``; refuses while another upgrade is unfinished. The caller
    holds ``hold(state_dir)``."""
    require_settled(state_dir, holding=True)
    journal = Journal(from_version, to_version)
    journal.history.append([journal.phase, journal.started])
    save(state_dir, journal)
    return journal


LOCK = ".upgrade.lock"


@contextlib.contextmanager
def hold(state_dir: Path) -> Iterator[None]:
    """Held for a whole upgrade or rollback, so no other one (or ``up``) runs meanwhile."""
    fd = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpgradeInProgressError(
                f"an upgrade or rollback is running on {state_dir}",
                fix="wait for it to finish (`cat STATE/upgrade.json` shows its phase)",
            ) from None
        yield
    finally:
        os.close(fd)


def _running(state_dir: Path) -> bool:
    try:
        with hold(state_dir):
            return False
    except UpgradeInProgressError:
        return True


def require_settled(state_dir: Path, holding: bool = False) -> None:
    """Raise while an upgrade runs, or when one was interrupted between two versions (the next
    command's check). An interrupted ``backing-up`` changed nothing: it is marked aborted and the
    command goes on. ``holding``: the caller holds the upgrade lock itself."""
    journal = load(state_dir)
    if journal is None:
        return
    if not holding and _running(state_dir):
        raise UpgradeInProgressError(
            f"the upgrade from {journal.from_version} to {journal.to_version} is running ({journal.phase})",
            fix="wait for it to finish",
        )
    if journal.phase == "backing-up":
        journal.move(state_dir, "aborted", "interrupted while taking the backup; nothing was changed")
        return
    if journal.phase in UNFINISHED:
        raise UpgradeInProgressError(
            f"the upgrade from {journal.from_version} to {journal.to_version} stopped while "
            f"{journal.phase}"
            + (f" ({journal.error})" if journal.error else "")
            + f"; the stack is between two versions ({path(state_dir)})",
            fix=f"run `appliance rollback` to return to {journal.from_version} and its data",
        )


def check_before_up(state_dir: Path) -> None:
    """``up``'s check: refuse a stack left between two versions, except as a step of the upgrade
    or rollback that is moving it."""
    if not os.environ.get(STEP_ENV):
        require_settled(state_dir)

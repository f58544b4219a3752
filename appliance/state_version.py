"""Which appliance wrote a state directory: ``STATE/state.json``, stamped by every ``up``.

An older appliance must not run a stack from state a newer one wrote: a newer MLflow may have
migrated the tracking database, secrets or folders may have moved. ``up`` (and ``restore``, for
an archive's own stamp) refuses such state with both versions named and the way out, instead of
failing later in some service's log. A state directory without the file predates the stamp and is
treated as format 1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from packaging.version import InvalidVersion, Version

from appliance import __version__
from appliance.errors import ApplianceError

STATE_FORMAT = 1
"""Raise when the state directory's layout changes in a way an older appliance cannot read."""
STAMP_FILE = "state.json"


class StateTooNewError(ApplianceError):
    """The state (or a backup of it) was written by a newer appliance than this one."""

    exit_code = 2

    def __init__(self, where: str, theirs: str, their_format: int) -> None:
        self.theirs = theirs
        super().__init__(
            f"{where} was written by appliance {theirs} (state format {their_format}); "
            f"this is appliance {__version__} (state format {STATE_FORMAT}), which cannot use it",
            fix=f"upgrade this appliance to {theirs} or later, or restore a backup made by "
            f"appliance {__version__} (`appliance restore ARCHIVE --state-dir NEW_DIR`)",
        )


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        return Version("0")


def is_newer(version: str, state_format: int) -> bool:
    """Whether a stamp names a newer appliance or state format than this one."""
    return state_format > STATE_FORMAT or _version(version) > _version(__version__)


def read_stamp(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((state_dir / STAMP_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"appliance_version": "unknown", "state_format": STATE_FORMAT + 1}
    return data if isinstance(data, dict) else None


def require_compatible(state_dir: Path) -> None:
    """Raise StateTooNewError when a newer appliance wrote ``state_dir``; writes nothing."""
    stamp = read_stamp(state_dir)
    if stamp is None:
        return
    theirs, fmt = str(stamp.get("appliance_version", "0")), int(str(stamp.get("state_format", 1)))
    if is_newer(theirs, fmt):
        raise StateTooNewError(str(state_dir), theirs, fmt)


def write_stamp(state_dir: Path) -> None:
    """Record this appliance as the state's writer (atomically; only when it changes)."""
    stamp = {"appliance_version": __version__, "state_format": STATE_FORMAT}
    current = read_stamp(state_dir) or {}
    if {k: current.get(k) for k in stamp} == stamp:
        return
    path = state_dir / STAMP_FILE
    tmp = path.with_name(f".{STAMP_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(stamp | {"written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    os.replace(tmp, path)

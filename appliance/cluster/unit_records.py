"""What each cluster unit is given, as the records its host keeps of what its service read.

Why: a unit restarts when a run writes one of its files. A run that wrote them and ended before the
unit started again (a failed or lost host, an interrupted ``up``, or the storage hosts' volume
servers, written in one play and restarted one host at a time in the next, where one failing host
ends the run before the others' turn) left files the running service never read, and the next
run, writing nothing new, would leave it running the old ones for good. So each host keeps, per
unit, a record of what its running service read, written once the unit turned healthy
(``roles/appliance_common/tasks/unit_records.yml``); a record that differs from what the unit is
given now restarts or reloads it, whatever this run wrote:

- ``NAME.applied``: its command line and settings (the systemd unit), its environment, the files
  it reads at its start (with the names of those it reads again on a reload: a new one is read at
  a start only) and, for a unit run from the virtualenv, the virtualenv's release. A difference
  restarts the unit.
- ``NAME.reloaded``, for a unit with such files: their content. A difference alone reloads it.

Each part is a short digest of the rendering, named, so a person reading the record sees which
part a restart was for; nothing in it gives back a value (the environment holds passwords).

Worked out here once, for the units machinery (``filter_plugins/appliance_applied.py``) and for
a role that reloads a unit's files itself and records it (the drain taking a serving host out of
the gateway: ``filter_plugins/appliance_gateway_leave.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

DIGEST_CHARS = 16
"""64 bits of SHA-256: enough that two renderings never read the same by chance."""


def _digest(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def _reload_files(unit: Mapping[str, Any]) -> dict[str, str]:
    return {str(f["key"]): str(f["value"]) for f in unit.get("files") or [] if f.get("reload")}


def _reloaded_line(reloaded: Mapping[str, str]) -> str | None:
    return f"files={_digest(reloaded)}\n" if reloaded else None


def reloaded_record(unit: Mapping[str, Any]) -> str | None:
    """``NAME.reloaded``'s line for ``unit`` (its files a list of ``{key, value, reload?}``), or
    None for a unit with no file it reads again on a reload."""
    return _reloaded_line(_reload_files(unit))


def unit_records(
    units: Iterable[Mapping[str, Any]],
    environments: Mapping[str, str],
    unit_files: Mapping[str, str],
    venv_units: Iterable[str] = (),
    release: str = "",
) -> dict[str, str]:
    """``{NAME.applied: line, NAME.reloaded: line}`` for each unit (the second only for a unit with
    files it reloads), its files a list of ``{key, value, reload?}`` as ``appliance cluster``
    renders them (the unit template reads them so too): ``environments`` and ``unit_files`` are the
    rendered environment files and systemd units by unit name (``appliance_rendered``),
    ``venv_units`` the units run from the virtualenv whose packages ``release`` digests."""
    from_venv = set(venv_units)
    records: dict[str, str] = {}
    for unit in units:
        name = str(unit["name"])
        at_start = {str(f["key"]): str(f["value"]) for f in unit.get("files") or [] if not f.get("reload")}
        reloaded = _reload_files(unit)
        parts = {
            "unit": _digest(unit_files.get(name, "")),
            "environment": _digest(environments.get(name, "")),
            "files": _digest({"read at start": at_start, "read on reload": sorted(reloaded)}),
            "virtualenv": release[:DIGEST_CHARS] if name in from_venv and release else "-",
        }
        records[f"{name}.applied"] = " ".join(f"{part}={value}" for part, value in parts.items()) + "\n"
        line = _reloaded_line(reloaded)
        if line is not None:
            records[f"{name}.reloaded"] = line
    return records

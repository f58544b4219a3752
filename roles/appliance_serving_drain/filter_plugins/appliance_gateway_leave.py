"""``appliance_gateway_leave``: a gateway's members files without the serving hosts leaving, and
the record of what its nginx reads once reloaded with them.

Why: the gateway's members files are files of its unit that nginx reads again on a reload, and the
units machinery reloads it whenever its host's record of what the running nginx read differs from
what the unit is given (``appliance.cluster.unit_records``). The drain takes hosts out of the
gateway itself, before they stop; recording what it made nginx read keeps the next ``up``, which
gives the gateway the same files, from reloading it a second time for nothing (each reload closes
the gateway's idle client connections). The files are rendered by the one function that renders
them for ``up`` (``appliance.gateway.members_files``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from appliance.cluster.unit_records import reloaded_record
from appliance.gateway import members_files


def appliance_gateway_leave(
    gateway_units: list[Mapping[str, Any]], members: list[dict[str, Any]], leaving: Collection[str]
) -> dict[str, Any]:
    """``{files: {key: content}, record: line or None}`` for the gateway unit among
    ``gateway_units`` (its host's ``appliance_gateway_units``), whose serving ``members`` lose the
    hosts in ``leaving``. No record when that unit's files do not hold the members files (a
    gateway brought up by a release that wrote them apart): the next ``up`` reloads it then."""
    files = members_files(members, leaving)
    gateway = next((u for u in gateway_units if u.get("name") == "gateway"), None)
    given = {str(f["key"]) for f in (gateway or {}).get("files") or []}
    record = None
    if gateway is not None and all(f["key"] in given for f in files):
        replaced = {f["key"]: f for f in files}
        record = reloaded_record(
            dict(gateway) | {"files": [replaced.get(f["key"], f) for f in gateway["files"]]}
        )
    return {"files": {f["key"]: f["value"] for f in files}, "record": record}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"appliance_gateway_leave": appliance_gateway_leave}

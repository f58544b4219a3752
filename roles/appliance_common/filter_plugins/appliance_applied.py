"""``appliance_applied``: what each unit is given, as the records its host keeps of what runs
(``appliance.cluster.unit_records`` says why and works them out, for this role and the drain)."""

from __future__ import annotations

from typing import Any

from appliance.cluster.unit_records import unit_records


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"appliance_applied": unit_records}

"""``appliance_rendered``: one of the role's templates rendered for every unit, on the controller.

Why: ``ansible.builtin.template`` in a loop costs a round trip per unit to compare what is on the
host; rendered here, all of a host's unit files go over in one ``appliance_files`` call. The
templates stay the one description of a unit file, rendered the way the template module renders
them (``trim_blocks``, the ``ansible_managed`` header).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MANAGED = "Ansible managed"  # ansible_managed's default, as the template module filled it in


def appliance_rendered(units: list[dict[str, Any]], template: str, **variables: Any) -> dict[str, str]:
    """``{unit's name: template rendered with item=unit and variables}`` for each unit."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,  # a name the template lacks fails, as in Ansible
        finalize=lambda value: "" if value is None else value,  # None prints nothing, as in Ansible
    )
    compiled = env.get_template(template)
    context = {"ansible_managed": MANAGED} | variables
    return {str(unit["name"]): compiled.render(context | {"item": unit}) for unit in units}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"appliance_rendered": appliance_rendered}

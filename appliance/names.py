"""The one rule for model, pipeline and dataset names, checked at every entry.

These names become file names (a model's run lock, ``datasets/NAME/`` in the object store, a
pipeline file's stem) and URL path segments, and they arrive from people and from machines: the
CLI, the controller's HTTP API, an Alertmanager label, a pipeline file. One rule, checked where
a name enters, keeps ``../x`` or ``a/b`` from ever reaching a path:

- 1 to 64 characters: letters, digits, ``.``, ``_`` and ``-``;
- the first one a letter or a digit (so no ``.``, ``..``, hidden files or option-like ``-x``);
- no ``..`` anywhere.

``child_path`` is the second line of defence where a checked name is joined to a folder: the
resolved path must stay inside that folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from appliance.errors import ApplianceError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
"""Model, pipeline and dataset names, matched whole (see the module docstring); ``..`` is refused
on top."""
RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
_NAME = re.compile(NAME_PATTERN)


class InvalidNameError(ApplianceError):
    """A model, pipeline or dataset name that breaks the rule; exit 2 (invalid input)."""

    exit_code = 2

    def __init__(self, what: str, value: object) -> None:
        self.what, self.value = what, value
        super().__init__(
            f"{what} {value!r} is not a valid name: it must be {RULE}",
            fix=f"give a {what} such as 'breast_cancer' or 'wine-v2'",
        )


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid name, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > 64:
        return f"is {len(value)} characters long (at most 64)"
    if ".." in value:
        return "contains '..'"
    if not _NAME.fullmatch(value):
        return "holds characters other than letters, digits, '.', '_' and '-', or starts with one of '._-'"
    return None


def check_name(value: object, what: str = "name") -> str:
    """``value`` when it follows the rule, else InvalidNameError naming it, the rule and the fix."""
    if name_problem(value) is not None:
        raise InvalidNameError(what, value)
    assert isinstance(value, str)
    return value


def is_valid_name(value: object) -> bool:
    return name_problem(value) is None


def child_path(folder: Path, name: str, suffix: str = "") -> Path:
    """``folder/NAME+suffix`` for a name that follows the rule and whose path stays in ``folder``.

    The rule alone already keeps the path inside; this checks the resolved path as well, so a
    symlink or a future change to the rule cannot turn a name into a way out."""
    check_name(name)
    path = folder / f"{name}{suffix}"
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise InvalidNameError("name", name)
    return path

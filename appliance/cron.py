"""Cron expressions, checked the same way by the answers file and by the controller.

The controller fires its schedule with croniter, which lives in the ``controller`` extra; the
installer core must refuse a bad ``monitoring.retrain_schedule`` at ``appliance plan`` without
it. So the rule is written here once, with no dependency, and the controller calls it before
croniter does (``workloads/controller/schedule.py``):

- five fields, ``minute hour day-of-month month day-of-week``, or six with croniter's trailing
  ``second`` field;
- each field a comma list of ``*``, ``N`` or ``N-M``, each with an optional ``/STEP``; months
  and week days also by name (``jan``, ``mon``); a week day is 0-7 (0 and 7 are Sunday);
- or one of ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.
"""

from __future__ import annotations

import re

ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_FIELDS: list[tuple[str, int, int, dict[str, int]]] = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
    ("second", 0, 59, {}),
]
_ITEM = re.compile(r"(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>[0-9]+))?")
FORMAT = "five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * *' (03:00 every day)"


def _value(text: str, low: int, high: int, names: dict[str, int]) -> int | None:
    number = names.get(text) if not text.isdigit() else int(text)
    return number if number is not None and low <= number <= high else None


def _field_problem(text: str, name: str, low: int, high: int, names: dict[str, int]) -> str | None:
    for item in text.lower().split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            return f"{name} field {text!r} is not '*', N, N-M or a list of them"
        if match["step"] is not None and int(match["step"]) == 0:
            return f"{name} field {text!r} has a step of 0"
        if match["range"] == "*":
            continue
        bounds = [_value(part, low, high, names) for part in match["range"].split("-")]
        if any(b is None for b in bounds):
            return f"{name} field {text!r} is outside {low}-{high}"
        if len(bounds) == 2 and bounds[0] > bounds[1]:  # type: ignore[operator]
            return f"{name} field {text!r} runs backwards"
    return None


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a cron expression, or None when it is."""
    text = expression.strip()
    if text.lower() in ALIASES:
        return None
    fields = text.split()
    if len(fields) not in (5, 6):
        return f"has {len(fields)} field{'s' if len(fields) != 1 else ''}, not 5"
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=False):
        problem = _field_problem(value, name, low, high, names)
        if problem:
            return problem
    return None


def check_cron(expression: str, setting: str = "cron expression") -> str:
    """``expression`` when it is a cron expression, else ``ValueError`` naming ``setting`` and
    the format."""
    problem = cron_problem(expression)
    if problem is not None:
        raise ValueError(f"{setting} {expression!r} is not a cron expression: it {problem}; give {FORMAT}")
    return expression

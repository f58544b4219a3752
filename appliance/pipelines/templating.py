"""Placeholders in step arguments: ``{params.dataset}``, ``{workdir}``, ``{steps.S.outputs.N}``.

Kept deliberately small (no expressions, no filters) so the loader can check every placeholder
before a run starts: a typo in a name is a load-time problem with a line number, not a failure
twenty minutes into training. ``{{`` and ``}}`` stand for literal braces (JSON arguments).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator

TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
SIMPLE_NAMES = ("workdir", "run_id", "model", "pipeline", "python", "state_dir")
FALSE_WORDS = {"", "false", "0", "no", "off", "none"}
OPERATORS = ("==", "!=")


class TemplateError(ValueError):
    """A placeholder cannot be filled; the message names it."""


def references(text: str) -> Iterator[str]:
    """Every placeholder name in ``text`` (stripped), in order."""
    for match in TOKEN.finditer(text):
        if match.group(1) is not None:
            yield match.group(1).strip()


def render(text: str, resolve: Callable[[str], str]) -> str:
    """``text`` with each ``{name}`` replaced by ``resolve(name)`` and ``{{``/``}}`` unescaped."""

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        return resolve(match.group(1).strip())

    return TOKEN.sub(substitute, text)


def split_condition(text: str) -> tuple[str, str | None, str | None]:
    """``"A == B"`` as ``(A, "==", B)``; a bare value as ``(value, None, None)``."""
    for op in OPERATORS:
        if op in text:
            left, right = text.split(op, 1)
            return left.strip(), op, right.strip()
    return text.strip(), None, None


def evaluate_condition(text: str, resolve: Callable[[str], str]) -> bool:
    """Whether a step's ``when`` holds once its placeholders are filled."""
    left, op, right = split_condition(text)
    value = render(left, resolve).strip()
    if op is None:
        return value.lower() not in FALSE_WORDS
    other = render(right or "", resolve).strip()
    return (value == other) if op == "==" else (value != other)


def check_name(name: str, params: set[str], outputs: dict[str, set[str]]) -> str | None:
    """Why ``name`` is not a known placeholder here, or None when it is.

    ``outputs`` maps each step that runs *earlier* to its output names.
    """
    if name in SIMPLE_NAMES:
        return None
    parts = name.split(".")
    if parts[0] == "params" and len(parts) == 2:
        if parts[1] in params:
            return None
        close = difflib.get_close_matches(parts[1], sorted(params), n=1)
        if close:
            return f"unknown parameter {parts[1]!r} in {{{name}}}: did you mean {{params.{close[0]}}}?"
        known = ", ".join(sorted(params)) or "(none declared)"
        return f"unknown parameter {parts[1]!r} in {{{name}}} (parameters: {known})"
    if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
        step, output = parts[1], parts[3]
        if step not in outputs:
            earlier = ", ".join(outputs) or "(none)"
            return f"{{{name}}} refers to step {step!r}, which is not an earlier step (earlier: {earlier})"
        if output not in outputs[step]:
            known = ", ".join(sorted(outputs[step])) or "(none declared)"
            return f"step {step!r} has no output {output!r} (its outputs: {known})"
        return None
    simple = ", ".join(f"{{{n}}}" for n in SIMPLE_NAMES)
    return (
        f"unknown placeholder {{{name}}}: use {{params.NAME}}, {{steps.STEP.outputs.NAME}} or one of "
        f"{simple} (write {{{{ and }}}} for literal braces)"
    )

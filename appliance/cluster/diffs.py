"""What ``cluster plan --diff`` prints for a task: the unified diff of each file it would change.

Why here and not Ansible's own display: the playbook runs quietly under ansible-runner, whose
events carry each task's ``diff`` as data (a dict, or a list of them for a module that changes
several files, or one per loop item); a task with no_log has its result censored, so no secret
ever reaches this.
"""

from __future__ import annotations

import difflib
import json
from typing import Any


def task_diffs(result: dict[str, Any]) -> list[str]:
    """Every diff in one task's result (its own, or its loop items'), as unified diff text."""
    found = [*_listed(result.get("diff"))]
    items = result.get("results")
    for item in items if isinstance(items, list) else []:  # a module's own "results" may be anything
        if isinstance(item, dict):
            found += _listed(item.get("diff"))
    return [text for text in (_unified(d) for d in found) if text]


def _listed(diff: Any) -> list[dict[str, Any]]:
    if isinstance(diff, dict):
        return [diff]
    return [d for d in diff if isinstance(d, dict)] if isinstance(diff, list) else []


def _text(value: Any) -> str:
    """A side of a diff as lines: modules give text, or a dict of attributes (file's state)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


UNSHOWN = ("src_binary", "dst_binary", "src_larger", "dst_larger")
"""The keys copy and template give instead of a side they will not show (binary, or larger than
Ansible's diff limit)."""


def _unified(diff: dict[str, Any]) -> str:
    """One diff as ``diff -u`` prints it; a module's own prepared text (apt's list) as it is; a
    file whose content Ansible would not show, named with why."""
    if diff.get("prepared"):
        return str(diff["prepared"]).rstrip("\n") + "\n"
    unshown = [key for key in UNSHOWN if diff.get(key)]
    if unshown:
        header = f"--- before: {diff.get('before_header', '')}\n+++ after: {diff.get('after_header', '')}\n"
        return header + f"(content not shown: {', '.join(k.replace('_', ' ') for k in unshown)})\n"
    if "before" not in diff and "after" not in diff:
        return ""
    before, after = _text(diff.get("before")), _text(diff.get("after"))
    if before == after:
        return ""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"before: {diff.get('before_header', '')}".rstrip(),
        tofile=f"after: {diff.get('after_header', '')}".rstrip(),
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )

"""Metric names referenced by a PromQL expression, found with a small tokenizer.

Dashboards and rules are checked against the names the stack exports; a full PromQL parser
would be a heavy dependency for that, while the grammar's few ambiguities are easy to strip
before tokenizing: string literals, label matchers ``{...}``, grouping lists ``by (...)``,
ranges ``[5m]``, Grafana variables (``$model``, ``${model}``, ``[[model]]``) and numbers. What
remains is identifiers; those followed by ``(`` are functions or aggregations, a few are
keywords, and the rest are metric names.

Not handled: metric names given only as ``{__name__="..."}`` (the stack never does that).
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names in the PromQL expression ``expr`` (Grafana variables allowed)."""
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.DOTALL)
_METRICS = re.compile(r"^\s*metrics\s*\(.*\)\s*$", re.DOTALL)


def variable_query_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus template-variable query.

    Such queries wrap PromQL in Grafana's own functions: ``label_values(expr, label)`` (or just
    ``label_values(label)``), ``query_result(expr)`` and ``metrics(regex)``; the label and the
    regex are not metric names.
    """
    if _METRICS.match(query):
        return set()
    for pattern in (_LABEL_VALUES, _QUERY_RESULT):
        found = pattern.match(query)
        if found:
            return metric_names(found.group(1))
    if re.match(r"^\s*label_values\s*\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", query):
        return set()
    return metric_names(query)

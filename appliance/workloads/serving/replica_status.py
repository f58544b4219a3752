"""What ``appliance status`` shows of the serving replicas: how many are ready, how many the
autoscaler asked for, and its last decision with its reason (read from the supervisor's
``/replicas`` with the admin token; nothing is written, nothing heavy is imported)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from appliance.secrets_store import read_only


def replicas_status(ctx: Any, running: bool) -> dict[str, Any] | None:
    """The supervisor's state, None when the stack runs one replica (no supervisor) or serving is
    not running, or ``{"error": ...}`` when it does not answer."""
    serving = ctx.answers.serving
    if serving.max_replicas <= 1 or not running:
        return None
    with read_only():
        token = ctx.secrets.get("serving_admin_token")
    admin = ctx.addressing.url("serving", ctx.answers.ports.serving_metrics)
    req = urllib.request.Request(
        f"{admin}/replicas",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            state: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError) as err:
        return {"error": f"the serving supervisor did not answer: {err}"}
    return state


def describe(state: dict[str, Any]) -> str:
    """One line for the status table's footer."""
    if "error" in state:
        return f"serving replicas: {state['error']}"
    line = (
        f"serving replicas: {state['ready']} ready, {state['desired']} asked "
        f"(min {state['min_replicas']}, max {state['max_replicas']}; {state['replaced']} replaced)"
    )
    decision = state.get("decision")
    if decision:
        line += f"\n  last autoscaler decision: {decision.get('reason', '')}"
    return line

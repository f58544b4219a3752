"""Alertmanager webhook payloads (version 4): which models a notification asks to retrain.

Only firing ``FeatureDrift`` and ``PredictionDrift`` alerts count; resolved ones and other alert
names are acknowledged and ignored. The payload is checked field by field so a malformed POST
gets a 400 naming the field, not a stack trace; fields Alertmanager may add later are allowed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from appliance.errors import ApplianceError

DRIFT_ALERTS = frozenset({"FeatureDrift", "PredictionDrift"})


class AlertPayloadError(ApplianceError):
    """The POST body is not an Alertmanager v4 notification we can act on."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "malformed Alertmanager payload: " + "; ".join(problems),
            fix="send Alertmanager's webhook JSON (version 4), each drift alert with a `model` label",
        )


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Alert(_Open):
    """One alert in a notification."""

    status: str
    labels: dict[str, str]
    annotations: dict[str, str] = {}


class Notification(_Open):
    """The webhook body (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""

    version: str
    status: str
    alerts: list[Alert]
    receiver: str = ""
    groupKey: str = ""


def parse_notification(body: bytes) -> Notification:
    """Parse and check a webhook body; raise AlertPayloadError naming every bad field."""
    import json

    try:
        data: Any = json.loads(body or b"")
    except ValueError as err:
        raise AlertPayloadError([f"body is not JSON ({err})"]) from err
    if not isinstance(data, dict):
        raise AlertPayloadError(["body must be a JSON object"])
    try:
        notification = Notification.model_validate(data)
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
        raise AlertPayloadError(problems) from err
    if notification.version != "4":
        raise AlertPayloadError([f"version: expected '4', got {notification.version!r}"])
    return notification


def models_to_retrain(notification: Notification) -> list[str]:
    """Models named by firing drift alerts, each once, in order; a drift alert without one is an error."""
    models: list[str] = []
    missing: list[str] = []
    for index, alert in enumerate(notification.alerts):
        name = alert.labels.get("alertname", "")
        if name not in DRIFT_ALERTS or alert.status != "firing":
            continue
        model = alert.labels.get("model", "").strip()
        if not model:
            missing.append(f"alerts.{index}.labels.model: {name} alert has no model label")
        elif model not in models:
            models.append(model)
    if missing:
        raise AlertPayloadError(missing)
    return models

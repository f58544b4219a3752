"""Alertmanager webhook payloads (version 4): which models a notification asks to retrain.

Only firing ``FeatureDrift`` and ``PredictionDrift`` alerts count; resolved ones and other alert
names are acknowledged and ignored. The payload is checked field by field so a malformed POST
gets a 400 naming the field, not a stack trace; fields Alertmanager may add later are allowed.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from appliance.errors import ApplianceError
from appliance.names import RULE, name_problem

log = logging.getLogger(__name__)
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


def drift_targets(notification: Notification) -> tuple[list[str], list[str]]:
    """Models named by firing drift alerts (each once, in order) and the reasons for every
    ``model`` label that is not a valid name (appliance.names) and so is not acted on.

    A bad label is ignored, not refused as a whole: the same notification may carry valid
    alerts, and Alertmanager groups them. A drift alert without a model label is an error."""
    models: list[str] = []
    refused: list[str] = []
    missing: list[str] = []
    for index, alert in enumerate(notification.alerts):
        name = alert.labels.get("alertname", "")
        if name not in DRIFT_ALERTS or alert.status != "firing":
            continue
        model = alert.labels.get("model", "").strip()
        if not model:
            missing.append(f"alerts.{index}.labels.model: {name} alert has no model label")
        elif (problem := name_problem(model)) is not None:
            refused.append(f"alerts.{index}.labels.model {model!r} {problem}: a model name must be {RULE}")
        elif model not in models:
            models.append(model)
    if missing:
        raise AlertPayloadError(missing)
    return models, refused


def models_to_retrain(notification: Notification) -> list[str]:
    """Models named by firing drift alerts, each once, in order; invalid names are logged and
    left out; a drift alert without a model label is an error."""
    models, refused = drift_targets(notification)
    for reason in refused:
        log.warning("drift alert not acted on: %s", reason)
    return models

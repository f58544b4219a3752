"""Alertmanager v4 payloads: which models to retrain, and a 400-worthy message when malformed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.workloads.controller.alerts import AlertPayloadError, models_to_retrain, parse_notification


def alert(name: str, model: str | None = "wine", status: str = "firing", **labels: str) -> dict[str, Any]:
    all_labels = {"alertname": name, **labels, **({"model": model} if model is not None else {})}
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "drift"},
        "startsAt": "2026-11-24T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "1a30ba71cca2921f",
    }


def payload(*alerts: dict[str, Any], version: str = "4") -> bytes:
    return json.dumps(
        {
            "version": version,
            "groupKey": '{}:{model="wine"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "controller",
            "groupLabels": {"model": "wine"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": list(alerts),
        }
    ).encode()


def test_firing_drift_alerts_name_each_model_once() -> None:
    body = payload(
        alert("FeatureDrift", feature="alcohol"),
        alert("FeatureDrift", feature="ash"),
        alert("PredictionDrift", model="iris"),
    )
    assert models_to_retrain(parse_notification(body)) == ["wine", "iris"]


def test_resolved_and_other_alerts_are_ignored() -> None:
    body = payload(
        alert("FeatureDrift", status="resolved"), alert("ServingLatencyHigh"), alert("TargetDown", model=None)
    )
    assert models_to_retrain(parse_notification(body)) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "body is not JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"version": "4", "status": "firing"}', "alerts: Field required"),
        (
            b'{"version": "4", "status": "firing", "alerts": [{"labels": {}}]}',
            "alerts.0.status: Field required",
        ),
        (
            b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": []}]}',
            "alerts.0.labels",
        ),
        (payload(alert("FeatureDrift"), version="3"), "version: expected '4', got '3'"),
        (
            payload(alert("FeatureDrift", model=None)),
            "alerts.0.labels.model: FeatureDrift alert has no model label",
        ),
    ],
)
def test_malformed_payloads_name_the_problem(body: bytes, expected: str) -> None:
    with pytest.raises(AlertPayloadError) as caught:
        models_to_retrain(parse_notification(body))
    assert expected in str(caught.value)
    assert "fix:" in str(caught.value)

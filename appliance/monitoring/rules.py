"""Prometheus alert rules for drift, serving SLOs and dead targets.

Thresholds and durations come from the answers file (``monitoring`` section) so that a user tunes
alerting in one place and tests can shorten ``for:`` to seconds. Alert names and the ``model``
label are a contract (``docs/interfaces.md``): Alertmanager routes the drift alerts to the
controller, which retrains the model named by the label.

Drift alerts keep the ``feature`` label (one alert per drifted feature, aggregated ``max`` over
serving replicas) so the notification says which feature moved; Alertmanager groups them by
``model`` so the controller still gets one notification per model.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from appliance.monitoring.durations import check_duration

ALERT_NAMES = (
    "FeatureDrift",
    "PredictionDrift",
    "ServingLatencyHigh",
    "ServingErrorRatio",
    "TargetDown",
    "BackupTooOld",
)
DRIFT_ALERTS = ("FeatureDrift", "PredictionDrift")


def _number(value: float, setting: str) -> str:
    if not value > 0:
        raise ValueError(f"{setting} must be above 0, got {value!r}")
    return repr(float(value))


def _min_rows(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"drift_min_rows must be a whole number of rows of at least 1, got {value!r}")
    return value


def _alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def _drift_alerts(psi: str, pred_psi: str, rows: int, drift_for: str, selector: str) -> list[dict]:
    """FeatureDrift and PredictionDrift over the series ``selector`` picks (all when empty)."""
    value = '{{ printf "%.3f" $value }}'
    pick = f"{{{selector}}}" if selector else ""
    # Drift is only read from a window holding enough rows: after a restart or a reload a window
    # of a few dozen rows reads as drift by chance (docs/monitoring.md has the measurement).
    enough_rows = f"on (model) (max by (model) (appliance_drift_window_rows{pick}) >= {rows})"
    return [
        _alert(
            "FeatureDrift",
            f"(max by (model, feature) (appliance_feature_psi{pick}) > {psi}) and {enough_rows}",
            drift_for,
            "warning",
            'Feature "{{ $labels.feature }}" of model {{ $labels.model }} has drifted',
            f'PSI of feature "{{{{ $labels.feature }}}}" is {value}, above {psi} for {drift_for}.',
        ),
        _alert(
            "PredictionDrift",
            f"(max by (model) (appliance_prediction_psi{pick}) > {pred_psi}) and {enough_rows}",
            drift_for,
            "warning",
            "Predictions of model {{ $labels.model }} have drifted",
            f"PSI of the predictions is {value}, above {pred_psi} for {drift_for}.",
        ),
    ]


def alert_rules(
    psi_threshold: float,
    drift_for: str,
    latency_p99_slo_seconds: float,
    error_ratio_threshold: float = 0.05,
    target_down_for: str = "1m",
    prediction_psi_threshold: float | None = None,
    latency_for: str = "5m",
    error_ratio_for: str = "5m",
    rate_window: str = "5m",
    drift_min_rows: int = 300,
    per_model: Mapping[str, tuple[float, int]] | None = None,
) -> list[dict]:
    """The alert rules as data (see :func:`render_alert_rules`). ``per_model``: models with their
    own drift threshold and minimum rows (``models[]`` in the answers), each with its own drift
    rules; the default drift rules leave those models out."""
    psi = _number(psi_threshold, "drift_psi_threshold")
    pred_psi = _number(prediction_psi_threshold or psi_threshold, "prediction_psi_threshold")
    slo = _number(latency_p99_slo_seconds, "latency_p99_slo_seconds")
    ratio = _number(error_ratio_threshold, "error_ratio_threshold")
    drift_for = check_duration(drift_for, "drift_for")
    window = check_duration(rate_window, "rate_window")
    rows = _min_rows(drift_min_rows)
    requests = "appliance_inference_requests_total"
    own = dict(per_model or {})
    # Models with their own thresholds get their own drift rules; the default ones leave them out.
    others = ",".join(f'model!="{name}"' for name in sorted(own))
    drift = _drift_alerts(psi, pred_psi, rows, drift_for, others)
    for name, (model_psi, model_rows) in sorted(own.items()):
        model_psi_text = _number(model_psi, f"models.{name}.drift_psi_threshold")
        drift += _drift_alerts(
            model_psi_text,
            model_psi_text if prediction_psi_threshold is None else pred_psi,
            _min_rows(model_rows),
            drift_for,
            f'model="{name}"',
        )
    return [
        *drift,
        _alert(
            "ServingLatencyHigh",
            "histogram_quantile(0.99, sum by (le, model) "
            f"(rate(appliance_inference_request_duration_seconds_bucket[{window}]))) > {slo}",
            check_duration(latency_for, "latency_for"),
            "warning",
            "p99 latency of model {{ $labels.model }} is above its objective",
            f"p99 request latency is {{{{ $value | humanizeDuration }}}}, above the {slo}s objective.",
        ),
        _alert(
            "ServingErrorRatio",
            f'sum by (model) (rate({requests}{{outcome="server_error"}}[{window}]))'
            f" / sum by (model) (rate({requests}[{window}])) > {ratio}",
            check_duration(error_ratio_for, "error_ratio_for"),
            "critical",
            "Model {{ $labels.model }} fails too many requests",
            f"{{{{ $value | humanizePercentage }}}} of requests end in a server error (limit {ratio}).",
        ),
        _alert(
            "TargetDown",
            "up == 0",
            check_duration(target_down_for, "target_down_for"),
            "critical",
            "{{ $labels.job }} at {{ $labels.instance }} is down",
            f"Prometheus could not scrape {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) "
            f"for {target_down_for}.",
        ),
        # The controller exports its own threshold (periods x the schedule's period), so the rule
        # holds no copy of the schedule; no schedule, no series, no alert.
        _alert(
            "BackupTooOld",
            "time() - appliance_backup_last_success_timestamp_seconds > appliance_backup_stale_after_seconds",
            "5m",
            "warning",
            "No good backup for too long",
            "The last good scheduled backup is {{ $value | humanizeDuration }} old, more than "
            "backup.stale_after_periods schedule periods; `appliance logs controller` says why.",
        ),
    ]


def render_alert_rules(
    psi_threshold: float,
    drift_for: str,
    latency_p99_slo_seconds: float,
    error_ratio_threshold: float = 0.05,
    target_down_for: str = "1m",
    prediction_psi_threshold: float | None = None,
    latency_for: str = "5m",
    error_ratio_for: str = "5m",
    rate_window: str = "5m",
    drift_min_rows: int = 300,
    per_model: Mapping[str, tuple[float, int]] | None = None,
) -> str:
    """The text of the alert rule file (``promtool check rules`` format), one group ``appliance``.

    ``prediction_psi_threshold`` defaults to ``psi_threshold``; ``rate_window`` is the range of
    the ``rate()`` behind the latency and error-ratio alerts.
    """
    rules = alert_rules(
        psi_threshold,
        drift_for,
        latency_p99_slo_seconds,
        error_ratio_threshold,
        target_down_for,
        prediction_psi_threshold,
        latency_for,
        error_ratio_for,
        rate_window,
        drift_min_rows,
        per_model,
    )
    doc = {"groups": [{"name": "appliance", "rules": rules}]}
    return "# Generated by the appliance from the answers file; edits are overwritten.\n" + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=False, width=1000
    )

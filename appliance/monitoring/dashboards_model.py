"""Dashboards about the served model: serving traffic and latency, and drift.

Thresholds are parameters so the lines drawn on the panels are the answers file's alert
thresholds (see :mod:`appliance.monitoring.dashboards`).
"""

from __future__ import annotations

from typing import Any

from appliance.monitoring.panels import Panel, Query, Row, dashboard, model_variable

M = 'model=~"$model"'
RATE = "$__rate_interval"


def _quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{M}}}[{RATE}])))"


def serving(latency_slo: float, error_ratio: float) -> dict[str, Any]:
    """Throughput, latency, errors, batching and the served model version."""
    requests = "appliance_inference_requests_total"
    latency = "appliance_inference_request_duration_seconds"
    overview = [
        Panel(
            "Served model version",
            [
                Query(
                    f"max by (model, version, source) (appliance_model_info{{{M}}})",
                    "{{model}} v{{version}}",
                    True,
                )
            ],
            kind="stat",
            width=8,
            height=5,
            description="The model version each server reports serving (appliance_model_info).",
            options={"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "none"},
        ),
        Panel(
            "Requests per second",
            [Query(f"sum(rate({requests}{{{M}}}[{RATE}]))", "requests/s", True)],
            unit="reqps",
            kind="stat",
            width=8,
            height=5,
        ),
        Panel(
            "p99 latency",
            [Query(_quantile(0.99, latency), "p99", True)],
            unit="s",
            kind="stat",
            width=8,
            height=5,
            threshold=latency_slo,
            description="Red above the latency objective (monitoring.latency_p99_slo_seconds).",
        ),
    ]
    traffic = [
        Panel(
            "Throughput by outcome",
            [Query(f"sum by (outcome) (rate({requests}{{{M}}}[{RATE}]))", "{{outcome}}")],
            unit="reqps",
        ),
        Panel(
            "Throughput by protocol",
            [Query(f"sum by (protocol) (rate({requests}{{{M}}}[{RATE}]))", "{{protocol}}")],
            unit="reqps",
        ),
        Panel(
            "Request latency",
            [Query(_quantile(q, latency), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
            unit="s",
            threshold=latency_slo,
            description="End-to-end request latency; the dashed line is the p99 objective.",
        ),
        Panel(
            "Server error ratio",
            [
                Query(
                    f'sum(rate({requests}{{{M}, outcome="server_error"}}[{RATE}]))'
                    f" / sum(rate({requests}{{{M}}}[{RATE}]))",
                    "server errors",
                )
            ],
            unit="percentunit",
            threshold=error_ratio,
            description="Share of requests ending in a server error; the dashed line is the alert threshold.",
        ),
    ]
    batching = [
        Panel(
            "Queue and compute time (p99)",
            [
                Query(_quantile(0.99, "appliance_inference_queue_duration_seconds"), "queue p99"),
                Query(_quantile(0.99, "appliance_inference_compute_duration_seconds"), "compute p99"),
            ],
            unit="s",
            description="Time waiting for a batch to form versus running the model.",
        ),
        Panel(
            "Batch size",
            [
                Query(
                    f"sum(rate(appliance_inference_batch_size_sum{{{M}}}[{RATE}]))"
                    f" / sum(rate(appliance_inference_batch_size_count{{{M}}}[{RATE}]))",
                    "mean",
                ),
                Query(_quantile(0.95, "appliance_inference_batch_size"), "p95"),
            ],
        ),
        Panel(
            "In-flight requests",
            [Query("sum by (protocol) (appliance_inference_in_flight)", "{{protocol}}")],
            width=24,
        ),
    ]
    replicas = [
        Panel(
            "Replicas",
            [
                Query("max(appliance_serving_replicas_ready)", "ready (in the balancer)"),
                Query("max(appliance_serving_replicas_desired)", "asked of the supervisor"),
                Query("max(appliance_autoscale_desired_replicas)", "autoscaler wants"),
                Query("max(appliance_autoscale_ready_replicas)", "ready at its last decision"),
                Query("sum(increase(appliance_serving_replicas_replaced_total[$__range]))", "replaced", True),
            ],
            description="Model-server replicas behind the balancer (serving.max_replicas above 1), what "
            "the controller's autoscaler asks for, and replicas that died and were replaced.",
        ),
        Panel(
            "Concurrency the autoscaler sees",
            [
                Query(
                    "max by (window) (appliance_autoscale_observed_concurrency)",
                    "average over {{window}} window",
                ),
                Query(
                    f"sum(rate(appliance_serving_concurrency_seconds_total[{RATE}]))",
                    "in flight (all replicas)",
                ),
                Query("max(appliance_autoscale_panic)", "panic mode"),
            ],
            description="Requests in flight across every replica, averaged over Knative's stable and "
            "panic windows; desired replicas = that / (serving.target_concurrency x target_utilization).",
        ),
        Panel(
            "Autoscaler decisions",
            [
                Query(
                    f"sum by (desired, mode) (increase(appliance_autoscale_decisions_total[{RATE}]))",
                    "{{desired}} replicas ({{mode}})",
                )
            ],
            width=24,
            description="Ticks of the autoscaler by the count it asked for and its mode (stable or panic); "
            "the reason of the last one: appliance status.",
        ),
    ]
    rows = [
        Row("Overview", overview),
        Row("Traffic", traffic),
        Row("Batching", batching),
        Row("Replicas", replicas),
    ]
    return dashboard("appliance-serving", "Appliance / Serving", rows, [model_variable()])


def drift(psi_threshold: float) -> dict[str, Any]:
    """Feature and prediction PSI against the alert threshold, and the window they come from."""
    rows = [
        Row(
            "Drift",
            [
                Panel(
                    "Feature PSI",
                    [
                        Query(
                            f"max by (model, feature) (appliance_feature_psi{{{M}}})",
                            "{{model}} / {{feature}}",
                        )
                    ],
                    threshold=psi_threshold,
                    width=24,
                    height=10,
                    description="Population stability index per feature over the live window; the dashed "
                    "line is the FeatureDrift threshold (monitoring.drift_psi_threshold).",
                ),
                Panel(
                    "Most drifted features now",
                    [
                        Query(
                            f"topk(10, max by (feature) (appliance_feature_psi{{{M}}}))", "{{feature}}", True
                        )
                    ],
                    kind="bargauge",
                    threshold=psi_threshold,
                    options={"orientation": "horizontal", "displayMode": "gradient"},
                ),
                Panel(
                    "Prediction PSI",
                    [Query(f"max by (model) (appliance_prediction_psi{{{M}}})", "{{model}}")],
                    threshold=psi_threshold,
                    description="PSI of the model's outputs; dashed: the PredictionDrift threshold.",
                ),
            ],
        ),
        Row(
            "Window",
            [
                Panel(
                    "Rows in the drift window",
                    [Query(f"max by (model) (appliance_drift_window_rows{{{M}}})", "{{model}}")],
                    width=24,
                    description="Live rows the PSI is computed from; PSI over few rows is noisy.",
                )
            ],
        ),
    ]
    return dashboard("appliance-drift", "Appliance / Drift", rows, [model_variable()])

"""The metric names the stack exports, so that dashboards and rules can be checked against them.

The appliance's own names are the contract in ``docs/interfaces.md`` (a unit test keeps the two
in step). Node exporter and DCGM exporter names are the few that the host dashboard reads; they
are checked against a live node exporter in the integration tests. A dashboard query naming any
other metric would show "No data" forever, which nobody notices until they need the panel.
"""

from __future__ import annotations

from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]

SERVING_METRICS: dict[str, MetricType] = {
    "appliance_inference_requests_total": "counter",
    "appliance_inference_request_duration_seconds": "histogram",
    "appliance_inference_queue_duration_seconds": "histogram",
    "appliance_inference_compute_duration_seconds": "histogram",
    "appliance_inference_batch_size": "histogram",
    "appliance_inference_in_flight": "gauge",
    "appliance_model_info": "gauge",
    "appliance_feature_psi": "gauge",
    "appliance_prediction_psi": "gauge",
    "appliance_drift_window_rows": "gauge",
    "appliance_serving_replicas_ready": "gauge",
    "appliance_serving_replicas_desired": "gauge",
    "appliance_serving_replicas_replaced_total": "counter",
    "appliance_serving_concurrency_seconds_total": "counter",
}
"""Model server metrics (``docs/interfaces.md``), with the replica supervisor's own."""

SERVING_INTERNAL: dict[str, MetricType] = {
    "appliance_inference_concurrency_seconds_total": "counter",
    "appliance_drift_bin_rows": "gauge",
    "appliance_drift_expected_ratio": "gauge",
}
"""What a model server writes for the replica supervisor alone (``serving/replica_metrics.py``):
its in-flight request-seconds, and a replica's drift bins, which the supervisor turns into the
``SERVING_METRICS`` above. Prometheus does not keep them (``OWN_JOB_METRICS``)."""

MODEL_LABEL = "model"
SERVING_PER_MODEL = frozenset(
    {
        "appliance_inference_requests_total",
        "appliance_inference_request_duration_seconds",
        "appliance_inference_queue_duration_seconds",
        "appliance_inference_compute_duration_seconds",
        "appliance_inference_batch_size",
        "appliance_model_info",
        "appliance_feature_psi",
        "appliance_prediction_psi",
        "appliance_drift_window_rows",
    }
)
"""The serving families labelled with their model (``MODEL_LABEL``); the others (requests in
flight, the replica supervisor's) are the server's as a whole. A unit test holds it to the model
server's own registry."""
SERVING_UNNAMED_MODEL = frozenset(
    {"appliance_inference_requests_total", "appliance_inference_request_duration_seconds"}
)
"""The per-model families where the model server itself writes ``model=""``: requests refused
before a model was known (no token, a name it does not serve) are counted there under no name,
so that a caller cannot mint label values. Every other per-model series names a served model."""

CONTROLLER_METRICS: dict[str, MetricType] = {
    "appliance_pipeline_runs_total": "counter",
    "appliance_pipeline_last_duration_seconds": "gauge",
    "appliance_pipeline_running": "gauge",
    "appliance_retrain_triggers_total": "counter",
    "appliance_model_promotions_total": "counter",
    "appliance_retrain_refusals_total": "counter",
    "appliance_backup_last_success_timestamp_seconds": "gauge",
    "appliance_backup_last_size_bytes": "gauge",
    "appliance_backup_last_duration_seconds": "gauge",
    "appliance_backup_runs_total": "counter",
    "appliance_backup_stale_after_seconds": "gauge",
    "appliance_autoscale_desired_replicas": "gauge",
    "appliance_autoscale_ready_replicas": "gauge",
    "appliance_autoscale_observed_concurrency": "gauge",
    "appliance_autoscale_panic": "gauge",
    "appliance_autoscale_decisions_total": "counter",
}
"""Controller metrics (``docs/interfaces.md``)."""

NODE_EXPORTER_METRICS: dict[str, MetricType] = {
    "node_cpu_seconds_total": "counter",
    "node_load1": "gauge",
    "node_memory_MemTotal_bytes": "gauge",
    "node_memory_MemAvailable_bytes": "gauge",
    "node_filesystem_size_bytes": "gauge",
    "node_filesystem_avail_bytes": "gauge",
    "node_network_receive_bytes_total": "counter",
    "node_network_transmit_bytes_total": "counter",
}
"""Host metrics from ``prometheus-node-exporter`` that the host dashboard uses."""

DCGM_METRICS: dict[str, MetricType] = {
    "DCGM_FI_DEV_GPU_UTIL": "gauge",
    "DCGM_FI_DEV_FB_USED": "gauge",
    "DCGM_FI_DEV_FB_FREE": "gauge",
    "DCGM_FI_DEV_GPU_TEMP": "gauge",
    "DCGM_FI_DEV_POWER_USAGE": "gauge",
}
"""NVIDIA DCGM exporter metrics; present only on hosts that run it next to a GPU."""

SEAWEEDFS_METRICS: dict[str, MetricType] = {
    "SeaweedFS_s3_request_total": "counter",
    "SeaweedFS_s3_request_seconds": "histogram",
    "SeaweedFS_volumeServer_resource": "gauge",
    "SeaweedFS_volumeServer_total_disk_size": "gauge",
}
"""The bundled object store's (SeaweedFS 4.x, ``-metricsPort``) that the host dashboard reads."""

PROMETHEUS_METRICS: dict[str, MetricType] = {"up": "gauge"}
"""Series Prometheus itself writes for every target."""

APPLIANCE_PREFIX = "appliance_"
"""Every series the appliance's own exporters write begins so, and no other exporter's does."""

OWN_JOB_METRICS: dict[str, dict[str, MetricType]] = {
    "serving": SERVING_METRICS,
    "controller": CONTROLLER_METRICS,
}
"""The scrape jobs (the stack's service names) whose exporter is the appliance's own, with the
families each writes. Prometheus keeps only those from such a job, and takes no ``appliance_``
series from any other job: a host that is less trusted than the centre (an edge box) cannot make
its node exporter's port, or its model server's, publish the drift, backup or pipeline series
that the centre's alerts act on."""

ALL_METRICS: dict[str, MetricType] = (
    SERVING_METRICS
    | CONTROLLER_METRICS
    | NODE_EXPORTER_METRICS
    | DCGM_METRICS
    | SEAWEEDFS_METRICS
    | PROMETHEUS_METRICS
)

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names(known: dict[str, MetricType] = ALL_METRICS) -> set[str]:
    """Names of the series that actually appear in a scrape: a histogram ``foo`` appears only as
    ``foo_bucket``, ``foo_sum`` and ``foo_count``, never as ``foo``."""
    names: set[str] = set()
    for name, kind in known.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def unknown_metrics(names: set[str], known: dict[str, MetricType] = ALL_METRICS) -> set[str]:
    """The names in ``names`` that no known exporter writes (bare histogram names included)."""
    return names - series_names(known)


def exposition_metric_names(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition (what a ``/metrics`` endpoint returns), so a
    test can compare a live scrape with :func:`unknown_metrics` or a dashboard's names."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(None, 1)[0])
    return names

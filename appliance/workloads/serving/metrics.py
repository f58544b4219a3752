"""Prometheus metrics of the model server, with the names and labels of docs/interfaces.md.

Each server owns its CollectorRegistry (several servers can live in one test process). Drift
gauges and model info are produced by a custom collector at scrape time, so PSI is computed once
per scrape rather than once per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _ModelCollector(Collector):
    """appliance_model_info and the drift gauges, read from the loaded models at scrape time."""

    def __init__(self, models: Callable[[], Iterable[Any]]) -> None:
        self._models = models

    def collect(self) -> Iterable[GaugeMetricFamily]:
        info = GaugeMetricFamily(
            "appliance_model_info", "Served model version", labels=["model", "version", "source"]
        )
        fpsi = GaugeMetricFamily(
            "appliance_feature_psi", "PSI of a feature over the window", labels=["model", "feature"]
        )
        ppsi = GaugeMetricFamily(
            "appliance_prediction_psi", "PSI of the prediction over the window", labels=["model"]
        )
        rows = GaugeMetricFamily("appliance_drift_window_rows", "Rows in the drift window", labels=["model"])
        for m in self._models():
            info.add_metric([m.name, m.version, m.source], 1)
            if m.drift is None:
                continue
            features, pred, n = m.drift.snapshot()
            for feature, value in features.items():
                fpsi.add_metric([m.name, feature], value)
            if pred is not None:
                ppsi.add_metric([m.name], pred)
            rows.add_metric([m.name], n)
        return [info, fpsi, ppsi, rows]


class ServingMetrics:
    """The server's metric objects; label children are cached for the hot path."""

    def __init__(self, models: Callable[[], Iterable[Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "appliance_inference_requests",
            "Inference requests",
            ["model", "version", "protocol", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "appliance_inference_request_duration_seconds",
            "Request latency inside the server",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "appliance_inference_queue_duration_seconds",
            "Time a request waited for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "appliance_inference_compute_duration_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "appliance_inference_batch_size",
            "Rows per executed batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "appliance_inference_in_flight", "Requests being served", ["protocol"], registry=r
        )
        r.register(_ModelCollector(models))
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """The labelled child of ``metric``, cached (labels() costs a lock and a dict build)."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def serve(self, port: int, host: str) -> Any:
        """Start /metrics on its own port (a daemon thread); returns the HTTP server."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

"""What a model server exports so that several of them can be read as one service.

- ``appliance_inference_concurrency_seconds_total``: the integral over time of the requests in
  flight. Its increase over a window divided by the window is the exact average concurrency there
  (the autoscaler's metric), where sampling the in-flight gauge would miss short bursts.
- With ``APPLIANCE_SERVING_REPLICA=1`` (set by the supervisor for the replicas it starts): each
  model's drift window as bin counts, and the profile's proportions, so that the supervisor sums
  the counts of every replica and computes PSI over all traffic (a mean of per-replica PSI values
  is not the PSI of the union, and each replica alone sees only its share of the rows). A single
  server does not export them: its own PSI gauges are already over all its traffic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

REPLICA_ENV = "APPLIANCE_SERVING_REPLICA"
CONCURRENCY = "appliance_inference_concurrency_seconds"
BIN_ROWS = "appliance_drift_bin_rows"
EXPECTED = "appliance_drift_expected_ratio"
PREDICTION = "__prediction__"
"""The ``variable`` label of the prediction's bins (a feature cannot be named so: it starts with
underscores, which no tabular dataset's columns do in this appliance)."""


class ConcurrencyClock:
    """In-flight request-seconds, advanced at every change of the in-flight count."""

    __slots__ = ("active", "since", "total")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0.0
        self.since = time.monotonic()

    def change(self, delta: int) -> None:
        now = time.monotonic()
        self.total += self.active * (now - self.since)
        self.since = now
        self.active += delta

    def read(self) -> float:
        """The integral up to now (from the metrics thread: a consistent-enough read)."""
        active, total, since = self.active, self.total, self.since
        return total + active * max(0.0, time.monotonic() - since)


class ReplicaCollector(Collector):
    """The concurrency integral, and (as a replica) the drift bin counts of every loaded model."""

    def __init__(self, clock: ConcurrencyClock, models: Callable[[], Iterable[Any]]) -> None:
        self.clock = clock
        self.models = models
        self.as_replica = os.environ.get(REPLICA_ENV) == "1"

    def collect(self) -> Iterable[Any]:
        conc = CounterMetricFamily(
            CONCURRENCY,
            "Integral over time of the inference requests in flight",
        )
        conc.add_metric([], self.clock.read())
        yield conc
        if not self.as_replica:
            return
        rows = GaugeMetricFamily(BIN_ROWS, "Drift window rows per bin", labels=["model", "variable", "bin"])
        expected = GaugeMetricFamily(
            EXPECTED, "Drift profile proportion per bin", labels=["model", "variable", "bin"]
        )
        for m in self.models():
            if m.drift is None:
                continue
            fcounts, pcounts, _ = m.drift.window_counts()
            fexp, pexp = m.drift.expected()
            names = list(m.drift.features)
            tables = [(names[i], fcounts[i], fexp[i]) for i in range(len(names))]
            if pcounts is not None and pexp is not None:
                tables.append((PREDICTION, pcounts, pexp))
            for variable, counts, exp in tables:
                for b, (c, e) in enumerate(zip(counts.tolist(), exp.tolist(), strict=True)):
                    rows.add_metric([m.name, variable, str(b)], c)
                    expected.add_metric([m.name, variable, str(b)], e)
        yield rows
        yield expected

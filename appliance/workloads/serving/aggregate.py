"""One metrics view of every replica, read at scrape time.

Chosen over a Prometheus target per replica because replicas come and go on ports picked at start,
and the scrape config (and the stack's single serving target) stays as it is:

- every series of every replica is passed through with a ``replica`` label (its slot), so sums
  over replicas are exact (``sum without (replica)``) and each replica stays visible;
- drift is recomputed over all traffic: the replicas export their drift windows as bin counts
  (replica_metrics.py), the counts of replicas serving the same profile are summed and PSI is
  computed from the sums with the same function a single server uses (drift.psi); their own PSI
  gauges are left out, so the alert rules read one PSI per model and feature as before;
- the autoscaler's counter ``appliance_serving_concurrency_seconds_total`` stays monotonic when a
  replica leaves: its last value moves into a retired sum (the seconds of a replica killed between
  two scrapes are lost, a fraction of a second of its load). The replicas' own counters are read
  for it and not passed through: they are that sum's parts (Prometheus would drop them anyway,
  ``catalog.SERVING_INTERNAL``).
"""

from __future__ import annotations

import threading
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from appliance.workloads.serving.drift import psi
from appliance.workloads.serving.replica_metrics import BIN_ROWS, CONCURRENCY, EXPECTED, PREDICTION

if TYPE_CHECKING:
    from appliance.workloads.serving.supervisor import Replica, Supervisor

RECOMPUTED = {
    BIN_ROWS,
    EXPECTED,
    "appliance_feature_psi",
    "appliance_prediction_psi",
    "appliance_drift_window_rows",
}
NOT_PASSED = RECOMPUTED | {CONCURRENCY}
"""The replicas' families the supervisor exports in another form, not with a ``replica`` label:
drift recomputed over all traffic, and the concurrency counters summed into its own."""


class Aggregator(Collector):
    """The supervisor's registry: replicas' series, drift over all traffic, replica counts."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._lock = threading.Lock()
        self._last: dict[int, float] = {}  # pid -> its concurrency counter when last read
        self._retired = 0.0
        self._retired_pids: set[int] = set()

    def fetch(self, replica: Replica) -> list[Metric]:
        """The replica's metric families (empty when it does not answer)."""
        if not replica.metrics_port:
            return []
        try:
            url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            return []
        families = list(text_string_to_metric_families(text))
        for family in families:
            if family.name == CONCURRENCY:
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        with self._lock:
                            if replica.proc.pid not in self._retired_pids:
                                self._last[replica.proc.pid] = sample.value
        return families

    def retire(self, replica: Replica) -> None:
        """The replica leaves: its concurrency seconds so far stay in the total."""
        with self._lock:
            self._retired += self._last.pop(replica.proc.pid, 0.0)
            self._retired_pids.add(replica.proc.pid)

    def in_flight(self, replica: Replica) -> float:
        for family in self.fetch(replica):
            if family.name == "appliance_inference_in_flight":
                return sum(s.value for s in family.samples)
        return 0.0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterable[Metric]:
        sup = self.supervisor
        replicas = [r for r in list(sup.replicas.values()) if r.state != "starting"]  # listening
        merged: dict[str, Metric] = {}
        bins: dict[tuple[str, str], list[tuple[dict[int, float], dict[int, float]]]] = defaultdict(list)
        for replica in replicas:
            families = self.fetch(replica)
            per: dict[str, dict[tuple[str, str], dict[int, float]]] = {BIN_ROWS: {}, EXPECTED: {}}
            for family in families:
                if family.name in (BIN_ROWS, EXPECTED):
                    for s in family.samples:
                        key = (s.labels["model"], s.labels["variable"])
                        per[family.name].setdefault(key, {})[int(s.labels["bin"])] = s.value
                    continue
                if family.name in NOT_PASSED:
                    continue
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type)
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "replica": str(replica.slot)}, s.value)
            for key, counts in per[BIN_ROWS].items():
                bins[key].append((counts, per[EXPECTED].get(key, {})))
        yield from merged.values()
        yield from self._drift(bins)
        yield from self._own(len(replicas))

    def _drift(
        self, bins: dict[tuple[str, str], list[tuple[dict[int, float], dict[int, float]]]]
    ) -> Iterable[Metric]:
        fpsi = GaugeMetricFamily(
            "appliance_feature_psi", "PSI of a feature over the window", labels=["model", "feature"]
        )
        ppsi = GaugeMetricFamily(
            "appliance_prediction_psi", "PSI of the prediction over the window", labels=["model"]
        )
        rows = GaugeMetricFamily("appliance_drift_window_rows", "Rows in the drift window", labels=["model"])
        window_rows: dict[str, float] = {}
        for (model, variable), parts in sorted(bins.items()):
            value, total = combined_psi(parts)
            if variable == PREDICTION:
                ppsi.add_metric([model], value)
            else:
                fpsi.add_metric([model, variable], value)
            window_rows[model] = max(window_rows.get(model, 0.0), total)
        for model, total in window_rows.items():
            rows.add_metric([model], total)
        return [fpsi, ppsi, rows]

    def _own(self, serving: int) -> Iterable[Metric]:
        sup = self.supervisor
        ready = GaugeMetricFamily("appliance_serving_replicas_ready", "Replicas in the balancer")
        ready.add_metric([], len(sup.serving()))
        desired = GaugeMetricFamily("appliance_serving_replicas_desired", "Replicas asked for")
        desired.add_metric([], sup.desired)
        replaced = CounterMetricFamily(
            "appliance_serving_replicas_replaced", "Replicas that exited on their own and were replaced"
        )
        replaced.add_metric([], sup.replaced)
        conc = CounterMetricFamily(
            "appliance_serving_concurrency_seconds",
            "Integral over time of the requests in flight on every replica (the autoscaler's metric)",
        )
        with self._lock:
            conc.add_metric([], self._retired + sum(self._last.values()))
        return [ready, desired, replaced, conc]


def combined_psi(parts: list[tuple[dict[int, float], dict[int, float]]]) -> tuple[float, float]:
    """PSI of the summed bin counts of replicas whose profile proportions agree with the first
    one's (mid hot reload two versions may be served; the first replica's version counts), and
    the rows summed."""
    reference = parts[0][1]
    width = max([*reference, *(b for counts, _ in parts for b in counts)], default=-1) + 1
    counts = np.zeros(width)
    for part_counts, expected in parts:
        if expected != reference:
            continue
        for b, c in part_counts.items():
            counts[b] += c
    exp = np.array([reference.get(b, 1e-4) for b in range(width)])
    return float(psi(counts[None, :], exp[None, :])[0]), float(counts.sum())

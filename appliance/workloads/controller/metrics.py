"""Controller metrics (names per docs/interfaces.md), computed from the run records at scrape time.

Reading the shared records instead of counting in memory means runs started with
``appliance pipeline run`` count too and the counters survive a controller restart; they only
grow, as Prometheus counters must, because records are never deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from appliance.pipelines.records import RunStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RunRecordsCollector:
    """A Prometheus collector over ``RunStore.counts()``."""

    def __init__(
        self,
        store: RunStore,
        pipelines: Callable[[], list[str]],
        refusals: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.store = store
        self.pipelines = pipelines
        self.refusals = refusals

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        runs = CounterMetricFamily(
            "appliance_pipeline_runs_total",
            "Finished pipeline runs by outcome.",
            labels=["pipeline", "outcome"],
        )
        for row in counts["outcomes"]:
            runs.add_metric([row["pipeline"], row["state"]], row["n"])
        yield runs
        last = GaugeMetricFamily(
            "appliance_pipeline_last_duration_seconds",
            "Duration of the latest finished run.",
            labels=["pipeline"],
        )
        for row in counts["last"]:
            last.add_metric([row["pipeline"]], row["seconds"])
        yield last
        running = GaugeMetricFamily("appliance_pipeline_running", "Runs in progress.", labels=["pipeline"])
        now = {row["pipeline"]: row["n"] for row in counts["running"]}
        for name in sorted(set(self.pipelines()) | set(now)):
            running.add_metric([name], now.get(name, 0))
        yield running
        triggers = CounterMetricFamily(
            "appliance_retrain_triggers_total", "Runs started, by trigger.", labels=["pipeline", "trigger"]
        )
        for row in counts["triggers"]:
            triggers.add_metric([row["pipeline"], row["trigger"]], row["n"])
        yield triggers
        promotions = CounterMetricFamily(
            "appliance_model_promotions_total", "Runs that promoted a new champion.", labels=["model"]
        )
        for row in counts["promotions"]:
            promotions.add_metric([row["model"]], row["n"])
        yield promotions
        # Refusals start no run, so they have no record: counted in memory since the start.
        refused = CounterMetricFamily(
            "appliance_retrain_refusals_total",
            "Drift alerts that started no run because the model has no dataset binding.",
            labels=["model"],
        )
        for model, n in sorted(self.refusals().items()):
            refused.add_metric([model], n)
        yield refused


def registry_for(
    store: RunStore, pipelines: Callable[[], list[str]], refusals: Callable[[], dict[str, int]] = dict
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunRecordsCollector(store, pipelines, refusals))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

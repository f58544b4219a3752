"""Autoscaling of the serving replicas: Knative's Pod Autoscaler (KPA), its knobs and its rules.

Every tick the autoscaler reads the serving service's exposition (the same ``/metrics`` that
Prometheus scrapes) and takes one counter from it, ``appliance_serving_concurrency_seconds_total``:
the integral over time of the requests in flight across every replica. Its increase over a window
divided by the window's length is the exact average concurrency over that window (not a mean of
instantaneous gauge samples, which misses every burst shorter than the sampling period). The
counter is sampled directly rather than through a Prometheus query because the panic window is
6 s and the stack's scrape interval is 15 s: Prometheus would hold at most one point in it.
Knative's own autoscaler scrapes its pods directly for the same reason. Prometheus still gets
every decision as the controller's ``appliance_autoscale_*`` metrics.

The algorithm follows Knative's ``autoscaler.Scale``:

- desired (stable) = ceil(average concurrency over the stable window / (target x utilisation)),
  and likewise over the panic window (by default 10 % of the stable window, 6 s of 60 s);
- both are limited by the scale rates (up to 1000x and down to half the ready replicas per tick);
- panic starts when desired (panic) / ready replicas >= the panic threshold (200 %), is extended
  while that holds, and ends one stable window after it last held; in panic the count follows the
  panic window and never goes down;
- a scale-down delay keeps the highest count wanted within the delay, so a short dip does not
  remove a replica the next burst needs;
- the result is bounded by ``min_replicas`` and ``max_replicas``. Scale to zero is not offered
  (``min_replicas`` is at least 1).

Each decision carries the metric values it saw and a sentence saying why.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

CONCURRENCY_METRIC = "appliance_serving_concurrency_seconds_total"
"""Cumulative in-flight request-seconds across every replica (monotonic over replica changes)."""
READY_METRIC = "appliance_serving_replicas_ready"
"""Replicas in the balancer now."""
MAX_SCALE_UP_RATE = 1000.0
MAX_SCALE_DOWN_RATE = 2.0
TICK_SECONDS = 2.0
"""Knative's tick-interval default."""


@dataclass(frozen=True)
class KpaSettings:
    """The answers' ``serving`` knobs, with Knative's names and meaning. No defaults here: they
    are the answers' (``appliance.answers.Serving``), so that one place decides them."""

    min_replicas: int
    max_replicas: int
    target_concurrency: float
    target_utilization: float
    stable_window: float
    panic_window_percentage: float
    panic_threshold_percentage: float
    scale_down_delay: float

    @property
    def target_value(self) -> float:
        """Concurrency one replica should carry: the target times the utilisation."""
        return self.target_concurrency * self.target_utilization

    @property
    def panic_window(self) -> float:
        return self.stable_window * self.panic_window_percentage / 100.0

    @classmethod
    def from_serving(cls, serving: Any) -> KpaSettings:
        """From the answers' ``serving`` section (or anything with the same attributes)."""
        return cls(**{f: getattr(serving, f) for f in cls.__dataclass_fields__})

    def as_json(self) -> str:
        """Compact, as the controller's ``--autoscale`` argument carries it."""
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(frozen=True)
class Decision:
    """One tick's outcome: what was seen, what is wanted, and why."""

    time: float
    ready: int
    desired: int
    stable_concurrency: float
    panic_concurrency: float
    desired_stable: int
    desired_panic: int
    panic: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConcurrencyWindows:
    """Samples of the cumulative concurrency counter; averages over any trailing window."""

    def __init__(self, keep_seconds: float) -> None:
        self.keep = keep_seconds
        self._samples: deque[tuple[float, float]] = deque()

    def record(self, now: float, total: float) -> None:
        if self._samples and total < self._samples[-1][1]:
            self._samples.clear()  # the counter went back (the serving service restarted)
        self._samples.append((now, total))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.keep:
            self._samples.popleft()

    def average(self, now: float, window: float) -> float | None:
        """Average concurrency over the last ``window`` seconds (the oldest sample at or before its
        start; a shorter span while history is short); None without two samples."""
        if len(self._samples) < 2:
            return None
        start = self._samples[0]
        for sample in self._samples:
            if sample[0] <= now - window:
                start = sample
            else:
                break
        end = self._samples[-1]
        span = end[0] - start[0]
        if span <= 0:
            return None
        return max(0.0, (end[1] - start[1]) / span)


class Kpa:
    """The decision state: the panic clock, the highest panic count and the scale-down delay."""

    def __init__(self, settings: KpaSettings) -> None:
        self.settings = settings
        self.windows = ConcurrencyWindows(settings.stable_window + 1.0)
        self._panic_since: float | None = None
        self._max_panic = 0
        self._delay: deque[tuple[float, int]] = deque()

    def observe(self, now: float, concurrency_seconds_total: float) -> None:
        self.windows.record(now, concurrency_seconds_total)

    def decide(self, now: float, ready: int) -> Decision | None:
        """The replica count wanted now, or None while there is no metric to decide on."""
        s = self.settings
        stable = self.windows.average(now, s.stable_window)
        panic_value = self.windows.average(now, s.panic_window)
        if stable is None or panic_value is None:
            return None
        ready = max(ready, 1)
        up = math.ceil(MAX_SCALE_UP_RATE * ready)
        down = math.floor(ready / MAX_SCALE_DOWN_RATE)
        dspc = min(max(math.ceil(stable / s.target_value), down), up)
        dppc = min(max(math.ceil(panic_value / s.target_value), down), up)
        over = dppc / ready >= s.panic_threshold_percentage / 100.0
        if over:
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since >= s.stable_window:
            self._panic_since, self._max_panic = None, 0
        in_panic = self._panic_since is not None
        if in_panic:
            self._max_panic = max(self._max_panic, dppc, ready)
            wanted = self._max_panic
            reason = (
                f"panic: {panic_value:.2f} in flight over the last {s.panic_window:g} s wants {dppc}, "
                f"{dppc / ready:.0%} of {ready} ready (threshold {s.panic_threshold_percentage:g} %); "
                f"no scale-down until {s.stable_window:g} s without panic"
            )
        else:
            wanted = dspc
            reason = (
                f"stable: {stable:.2f} in flight over the last {s.stable_window:g} s / "
                f"({s.target_concurrency:g} x {s.target_utilization:g}) per replica = {dspc}"
            )
        held = self._hold(now, wanted)
        if held > wanted:
            reason += f"; kept at {held} by the {s.scale_down_delay:g} s scale-down delay"
        bounded = min(max(held, s.min_replicas), s.max_replicas)
        if bounded != held:
            which = "min_replicas" if bounded > held else "max_replicas"
            reason += f"; bounded to {bounded} by {which}"
        return Decision(now, ready, bounded, stable, panic_value, dspc, dppc, in_panic, reason)

    def _hold(self, now: float, wanted: int) -> int:
        """The highest count wanted within the scale-down delay (Knative's delay window)."""
        if self.settings.scale_down_delay <= 0:
            return wanted
        self._delay.append((now, wanted))
        while self._delay and self._delay[0][0] <= now - self.settings.scale_down_delay:
            self._delay.popleft()
        return max(w for _, w in self._delay)


def parse_exposition(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum the samples of each metric in ``names`` from Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name in names:
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return out


class Autoscaler:
    """The controller's loop: sample, decide, ask the serving supervisor for the count."""

    def __init__(
        self,
        settings: KpaSettings,
        metrics_url: str,
        admin_url: str,
        admin_token: str,
        on_decision: Callable[[Decision], None] | None = None,
        tick: float = TICK_SECONDS,
    ) -> None:
        self.kpa = Kpa(settings)
        self.metrics_url = metrics_url
        self.admin_url = admin_url
        self.admin_token = admin_token
        self.on_decision = on_decision
        self.tick = tick
        self.last: Decision | None = None
        self.history: deque[Decision] = deque(maxlen=200)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, now: float | None = None) -> Decision | None:
        now = time.monotonic() if now is None else now
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            values = parse_exposition(resp.read().decode(), (CONCURRENCY_METRIC, READY_METRIC))
        if CONCURRENCY_METRIC not in values:
            return None
        self.kpa.observe(now, values[CONCURRENCY_METRIC])
        ready = int(values.get(READY_METRIC, 1))
        decision = self.kpa.decide(now, ready)
        if decision is None:
            return None
        self.last = decision
        self.history.append(decision)
        self._apply(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    def _apply(self, decision: Decision) -> None:
        """Tell the supervisor the count and the decision (it shows both in its status)."""
        body = json.dumps({"replicas": decision.desired, "decision": decision.as_dict()}).encode()
        req = urllib.request.Request(
            self.admin_url,
            data=body,
            method="PUT",
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    def run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.step()
            except OSError as err:  # serving restarting, not up yet: decide again next tick
                log.debug("autoscaler: %s", err)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="autoscaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class DecisionCollector:
    """The autoscaler's decisions as controller metrics (Prometheus and Grafana read them there):
    the replicas wanted, the concurrency seen over each window, panic mode, and decisions counted
    by the count they asked for and by mode."""

    def __init__(self, scaler: Autoscaler) -> None:
        self.scaler = scaler
        self.counts: dict[tuple[str, str], int] = {}

    def record(self, decision: Decision) -> None:
        key = (str(decision.desired), "panic" if decision.panic else "stable")
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> list[Metric]:
        d = self.scaler.last
        desired = GaugeMetricFamily("appliance_autoscale_desired_replicas", "Replicas the autoscaler wants")
        ready = GaugeMetricFamily("appliance_autoscale_ready_replicas", "Replicas ready when it decided")
        conc = GaugeMetricFamily(
            "appliance_autoscale_observed_concurrency",
            "Average requests in flight over the window",
            labels=["window"],
        )
        panic = GaugeMetricFamily("appliance_autoscale_panic", "1 while in panic mode")
        decisions = CounterMetricFamily(
            "appliance_autoscale_decisions", "Autoscaler decisions", labels=["desired", "mode"]
        )
        if d is not None:
            desired.add_metric([], d.desired)
            ready.add_metric([], d.ready)
            conc.add_metric(["stable"], d.stable_concurrency)
            conc.add_metric(["panic"], d.panic_concurrency)
            panic.add_metric([], 1.0 if d.panic else 0.0)
        for (count, mode), n in sorted(self.counts.items()):
            decisions.add_metric([count, mode], n)
        return [desired, ready, conc, panic, decisions]


def start_for_controller(settings_json: str, serving_url: str, admin_token: str, registry: Any) -> Autoscaler:
    """The controller's hook: an autoscaler over the serving supervisor at ``serving_url`` (its
    metrics port), its decisions logged and exported through the controller's ``registry``."""
    settings = KpaSettings(**json.loads(settings_json))
    base = serving_url.rstrip("/")
    scaler = Autoscaler(settings, f"{base}/metrics", f"{base}/replicas", admin_token)
    collector = DecisionCollector(scaler)
    last: list[int] = []

    def on_decision(decision: Decision) -> None:
        collector.record(decision)
        if not last or last[0] != decision.desired:
            log.info("autoscale: %d replicas (%s)", decision.desired, decision.reason)
            last[:] = [decision.desired]

    scaler.on_decision = on_decision
    registry.register(collector)
    scaler.start()
    return scaler

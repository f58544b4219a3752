"""The autoscaler's decisions (Knative's KPA) on recorded concurrency series, and the answers
keys that configure it."""

from __future__ import annotations

import pytest

from appliance.answers_file import parse_answers
from appliance.errors import InvalidInputError
from appliance.workloads.controller.autoscale import (
    CONCURRENCY_METRIC,
    READY_METRIC,
    Decision,
    Kpa,
    KpaSettings,
    parse_exposition,
)

SETTINGS = KpaSettings(
    min_replicas=1,
    max_replicas=8,
    target_concurrency=10,
    target_utilization=0.5,  # 5 in flight per replica
    stable_window=60,
    panic_window_percentage=10,
    panic_threshold_percentage=200,
    scale_down_delay=0,
)


def replay(
    kpa: Kpa, series: list[tuple[float, float]], ready: int | None = None, tick: float = 2.0
) -> list[Decision]:
    """Feed (seconds, concurrency) segments as a cumulative counter sampled every ``tick`` and
    decide at each sample; the ready count follows the last decision unless fixed."""
    t, total, count, out = 0.0, 0.0, ready or 1, []
    kpa.observe(t, total)
    for seconds, concurrency in series:
        for _ in range(round(seconds / tick)):
            t += tick
            total += concurrency * tick
            kpa.observe(t, total)
            decision = kpa.decide(t, count)
            assert decision is not None
            out.append(decision)
            if ready is None:
                count = decision.desired
    return out


def test_stable_load_asks_concurrency_over_target_times_utilisation() -> None:
    decisions = replay(Kpa(SETTINGS), [(120, 12.0)], ready=3)
    last = decisions[-1]
    assert last.stable_concurrency == pytest.approx(12.0)
    assert last.desired == 3  # ceil(12 / (10 x 0.5))
    assert not last.panic
    assert "stable" in last.reason and "= 3" in last.reason


def test_a_burst_panics_at_once_and_never_scales_down_while_panicking() -> None:
    kpa = Kpa(SETTINGS)
    calm = replay(kpa, [(60, 4.0)], ready=1)
    assert calm[-1].desired == 1 and not calm[-1].panic
    # 30 in flight: the 6 s window sees it within one tick; 60 s average lags far behind
    t, total = 60.0, 4.0 * 60
    decisions = []
    count = 1
    for _ in range(5):
        t += 2
        total += 30 * 2
        kpa.observe(t, total)
        d = kpa.decide(t, count)
        assert d is not None
        decisions.append(d)
        count = d.desired
    first = decisions[0]
    assert first.panic and first.desired_panic > first.desired_stable
    assert "panic" in first.reason
    assert decisions[-1].desired == 6  # ceil(30 / 5)
    counts = [d.desired for d in decisions]
    assert counts == sorted(counts)  # in panic the count only goes up


def test_panic_ends_one_stable_window_after_the_threshold_last_held() -> None:
    decisions = replay(Kpa(SETTINGS), [(20, 40.0), (100, 1.0)])
    panic = [d for d in decisions if d.panic]
    assert panic and panic[0].time == 2.0  # the first tick of the burst
    # the threshold held on the first tick only (the count then caught up); panic lasts a stable
    # window after that, and the count does not fall during it although the load did at 20 s
    assert panic[-1].time - panic[0].time >= 60 - 2
    assert all(d.desired == panic[0].desired for d in panic)
    last = decisions[-1]
    assert not last.panic and last.desired < panic[0].desired


def test_scale_down_waits_for_the_delay() -> None:
    settings = KpaSettings(**{**SETTINGS.__dict__, "scale_down_delay": 30.0, "stable_window": 6.0})
    kpa = Kpa(settings)
    decisions = replay(kpa, [(20, 20.0), (60, 1.0)], ready=4)
    after = [d for d in decisions if d.time > 20]
    # the 6 s window falls to 1 replica's worth within a few ticks, but the delay keeps 4 for 30 s
    assert all(d.desired == 4 for d in after if d.time <= 20 + 28)
    assert after[-1].desired == 2  # half of the 4 ready per tick (Knative's max scale-down rate)
    held = [d for d in after if "scale-down delay" in d.reason]
    assert held


def test_bounds_name_the_key_that_bounded() -> None:
    settings = KpaSettings(**{**SETTINGS.__dict__, "min_replicas": 2, "max_replicas": 3})
    low = replay(Kpa(settings), [(120, 0.5)], ready=2)[-1]
    assert low.desired == 2 and "min_replicas" in low.reason
    high = replay(Kpa(settings), [(120, 100.0)], ready=3)[-1]
    assert high.desired == 3 and "max_replicas" in high.reason


def test_no_decision_without_two_samples_and_a_counter_reset_starts_over() -> None:
    kpa = Kpa(SETTINGS)
    kpa.observe(0, 100.0)
    assert kpa.decide(0, 1) is None
    kpa.observe(2, 120.0)
    decision = kpa.decide(2, 1)
    assert decision is not None and decision.stable_concurrency == pytest.approx(10.0)
    kpa.observe(4, 5.0)  # the serving service restarted: its counter began again
    assert kpa.decide(4, 1) is None


def test_scale_down_is_limited_to_half_the_ready_replicas_per_tick() -> None:
    kpa = Kpa(KpaSettings(**{**SETTINGS.__dict__, "max_replicas": 16}))
    kpa.observe(0, 0)
    kpa.observe(60, 0)
    decision = kpa.decide(60, 16)
    assert decision is not None and decision.desired == 8


def test_exposition_sums_every_replica() -> None:
    text = (
        f"# HELP {CONCURRENCY_METRIC} x\n# TYPE {CONCURRENCY_METRIC} counter\n"
        f'{CONCURRENCY_METRIC}{{replica="0"}} 1.5\n{CONCURRENCY_METRIC}{{replica="1"}} 2.5\n'
        f"{READY_METRIC} 2.0\nother_metric 7\n"
    )
    values = parse_exposition(text, (CONCURRENCY_METRIC, READY_METRIC))
    assert values == {CONCURRENCY_METRIC: 4.0, READY_METRIC: 2.0}


@pytest.mark.parametrize(
    ("yaml_text", "key", "words"),
    [
        ("serving:\n  min_replicas: 4\n  max_replicas: 2\n", "serving", "min_replicas (4) is above"),
        ("serving:\n  min_replicas: 0\n", "serving.min_replicas", "greater than or equal to 1"),
        ("serving:\n  target_concurrency: 0\n", "serving.target_concurrency", "greater than 0"),
        ("serving:\n  target_utilization: 1.5\n", "serving.target_utilization", "less than or equal"),
        ("serving:\n  panic_threshold_percentage: 100\n", "serving.panic_threshold_percentage", "110"),
        ("serving:\n  stable_window: 2\n", "serving.stable_window", "6"),
    ],
)
def test_answers_keys_are_validated_naming_the_key(yaml_text: str, key: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_answers(yaml_text)
    (problem,) = info.value.problems
    assert problem.path == key
    assert words in problem.message


def test_settings_come_from_the_answers() -> None:
    answers = parse_answers("serving:\n  max_replicas: 4\n  target_concurrency: 3\n  scale_down_delay: 0\n")
    s = KpaSettings.from_serving(answers.serving)
    assert (s.min_replicas, s.max_replicas, s.target_value, s.scale_down_delay) == (1, 4, 3 * 0.7, 0)
    assert s.panic_window == pytest.approx(6.0)

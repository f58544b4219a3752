"""A flapping drift alert starts one retrain per cool-down window, driven by a fake clock."""

from __future__ import annotations

import threading

from appliance.workloads.controller.cooldown import Cooldown


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_second_start_within_the_window_is_refused_and_allowed_after() -> None:
    clock = FakeClock()
    cooldown = Cooldown(600, clock)
    starts: list[str] = []

    def start() -> bool:
        starts.append("run")
        return True

    assert cooldown.try_start("wine", start) is True
    clock.now += 599
    assert cooldown.try_start("wine", start) is None
    assert cooldown.remaining("wine") == 1
    assert cooldown.try_start("iris", start) is True, "each model has its own window"
    clock.now += 1
    assert cooldown.try_start("wine", start) is True
    assert len(starts) == 3


def test_a_refused_start_does_not_open_a_window() -> None:
    cooldown = Cooldown(600, FakeClock())
    assert cooldown.try_start("wine", lambda: False) is False
    assert cooldown.remaining("wine") == 0
    assert cooldown.try_start("wine", lambda: True) is True


def test_seeding_from_records_keeps_the_window_across_restarts() -> None:
    clock = FakeClock()
    cooldown = Cooldown(600, clock)
    cooldown.seed("wine", clock.now - 100)
    assert cooldown.try_start("wine", lambda: True) is None
    assert cooldown.remaining("wine") == 500


def test_concurrent_notifications_start_exactly_one_run() -> None:
    cooldown = Cooldown(600, FakeClock())
    starts: list[int] = []
    barrier = threading.Barrier(8)

    def start() -> bool:
        starts.append(1)
        return True

    def notify() -> None:
        barrier.wait()
        cooldown.try_start("wine", start)

    threads = [threading.Thread(target=notify) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert starts == [1]

"""Cron expressions are checked up front and the next fire time is computed in UTC."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from appliance.workloads.controller.schedule import InvalidScheduleError, Scheduler, check_schedule, next_fire


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 3 * * *", datetime(2026, 11, 24, 18, 0, tzinfo=UTC), datetime(2026, 11, 25, 3, 0, tzinfo=UTC)),
        ("0 3 * * *", datetime(2026, 11, 24, 2, 59, tzinfo=UTC), datetime(2026, 11, 24, 3, 0, tzinfo=UTC)),
        ("0 3 * * *", datetime(2026, 11, 24, 3, 0, tzinfo=UTC), datetime(2026, 11, 25, 3, 0, tzinfo=UTC)),
        ("*/15 * * * *", datetime(2026, 11, 24, 18, 7), datetime(2026, 11, 24, 18, 15, tzinfo=UTC)),
        ("0 0 * * mon", datetime(2026, 11, 24, 12, 0, tzinfo=UTC), datetime(2026, 11, 30, 0, 0, tzinfo=UTC)),
        ("@daily", datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2027, 1, 1, 0, 0, tzinfo=UTC)),
    ],
)
def test_next_fire(expression: str, after: datetime, expected: datetime) -> None:
    assert next_fire(expression, after) == expected


@pytest.mark.parametrize("expression", ["", "61 * * * *", "* * *", "every day", "0 3 * * funday"])
def test_invalid_expressions_are_refused_with_an_example(expression: str) -> None:
    with pytest.raises(InvalidScheduleError) as caught:
        check_schedule(expression)
    assert "is not a cron expression" in str(caught.value) and "'0 3 * * *'" in str(caught.value)


def test_the_scheduler_fires_when_its_clock_passes_the_next_time() -> None:
    now = [datetime(2026, 11, 24, 2, 59, 59, tzinfo=UTC)]
    fired = threading.Event()
    fires: list[datetime] = []

    def fire() -> None:
        fires.append(now[0])
        fired.set()

    scheduler = Scheduler("0 3 * * *", fire, now=lambda: now[0])
    scheduler.start()
    try:
        assert not fired.wait(0.3)
        assert scheduler.next_at == datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
        now[0] += timedelta(seconds=1)
        assert fired.wait(5)
        fired.clear()
        assert not fired.wait(0.5), "a tick fires once, then waits for the next one"
        assert fires == [datetime(2026, 11, 24, 3, 0, tzinfo=UTC)]
        assert scheduler.next_at == datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    finally:
        scheduler.stop()
        scheduler.join(5)
    assert not scheduler.is_alive()

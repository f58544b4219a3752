"""The cron schedule (croniter): validate the expression up front, compute the next fire time.

The scheduler thread sleeps in short slices toward the next fire time, so a stop request ends
it within a second and a clock change is noticed; a fire while the model's run is still going
is skipped (the lock says so) rather than queued.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from appliance.cron import FORMAT, cron_problem
from appliance.errors import ApplianceError

log = logging.getLogger(__name__)
SLICE_SECONDS = 1.0


class InvalidScheduleError(ApplianceError):
    exit_code = 2

    def __init__(self, expression: str, problem: str | None = None) -> None:
        why = f": it {problem}" if problem else ""
        super().__init__(f"--schedule {expression!r} is not a cron expression{why}", fix=f"give {FORMAT}")


def check_schedule(expression: str) -> str:
    """The expression, or InvalidScheduleError when the rule the answers file uses
    (``appliance.cron``) or croniter refuses it."""
    from croniter import croniter

    problem = cron_problem(expression)
    if problem is not None or not croniter.is_valid(expression):
        raise InvalidScheduleError(expression, problem)
    return expression


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``expression`` fires (UTC when naive)."""
    from croniter import croniter

    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    fire: datetime = croniter(expression, after).get_next(datetime)
    return fire


class Scheduler(threading.Thread):
    """Calls ``fire()`` at every cron tick until ``stop()``."""

    def __init__(
        self,
        expression: str,
        fire: Callable[[], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(name="cron-scheduler", daemon=True)
        self.expression = check_schedule(expression)
        self.fire = fire
        self.now = now
        self._stop_event = threading.Event()
        self.next_at: datetime | None = None

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.next_at = next_fire(self.expression, self.now())
            while not self._stop_event.is_set():
                remaining = (self.next_at - self.now()).total_seconds()
                if remaining <= 0:
                    break
                self._stop_event.wait(min(remaining, SLICE_SECONDS))
            if self._stop_event.is_set():
                return
            try:
                self.fire()
            except Exception:  # a failed trigger must not end the schedule
                log.exception("scheduled trigger failed")

    def stop(self) -> None:
        self._stop_event.set()

"""Per-model cool-down: a flapping drift alert starts one retrain, not a storm.

The clock is injected so tests can move time by hand; the controller seeds it from the run
records at start-up so a restart does not forget a retrain that started a minute ago.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Cooldown:
    """Remembers when each model last started a retrain and refuses another within ``seconds``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def seed(self, model: str, started: float) -> None:
        """Record a start that happened before this process (from the run records)."""
        with self._lock:
            self._last[model] = max(started, self._last.get(model, started))

    def remaining(self, model: str) -> float:
        """Seconds until ``model`` may start again (0 when it may now)."""
        with self._lock:
            last = self._last.get(model)
        if last is None:
            return 0.0
        return max(0.0, last + self.seconds - self.clock())

    def try_start(self, model: str, start: Callable[[], bool]) -> bool | None:
        """Run ``start`` unless cooling down; None when cooling, else ``start()``'s result.

        The cool-down begins only when ``start`` returns True (a run really started), and the
        check and the start happen under one lock, so two concurrent notifications start one run.
        """
        with self._lock:
            last = self._last.get(model)
            if last is not None and self.clock() < last + self.seconds:
                return None
            started = start()
            if started:
                self._last[model] = self.clock()
            return started

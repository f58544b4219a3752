"""A client that asks one HTTP server in a closed loop and remembers when each answer or failure
came: what the benchmarks of a change applied to a running server (a reload against a restart)
measure its clients' outage with."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from urllib.parse import urlsplit


class Prober(threading.Thread):
    """Asks ``url`` (GET, ``headers``) from one thread until ``stopping`` is set. Any HTTP answer
    counts; a refused or reset connection or a timeout (2 s) fails."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = headers or {}
        self.events: list[tuple[float, bool]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", self.target, headers=self.headers)
                conn.getresponse().read()
                conn.close()
                self.events.append((time.monotonic(), True))
            except (OSError, http.client.HTTPException):
                self.events.append((time.monotonic(), False))
                time.sleep(0.02)

    def since(self, start: float) -> tuple[int, int, float]:
        """Answers, failures and the longest gap between two answers after ``start``."""
        events = [e for e in list(self.events) if e[0] >= start]
        answered = [t for t, ok in events if ok]
        failed = sum(1 for _, ok in events if not ok)
        marks = [start, *answered]
        gap = max((b - a for a, b in itertools.pairwise(marks)), default=0.0)
        return len(answered), failed, gap

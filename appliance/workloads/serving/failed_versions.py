"""A version that failed to download or load is tried again later and later, not every poll round.

The reload poller asks each source every round which version it names (for a registry, one small
REST call) and fetches it when it differs from the one served. A version that cannot be served (a
champion that is no ONNX model, one whose files the registry lost) would be downloaded again every
round for as long as the alias names it: N MB every 30 s, from every replica of every host. A
failure may also be passing (the registry restarting mid-download), so the version is not given up:
it is tried again the next round, then after two rounds, four, ... up to 15 minutes between tries
(with the default 30 s round: 30, 60, 120 s, ...), and at once when the source names another
version or an operator loads the model through the repository API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

FIRST_RETRY_S = 30.0
"""The first wait after a failure where no poller runs (the poller's own round where one does, so
one failure costs no time)."""
MAX_RETRY_S = 900.0
"""The longest wait between two tries of the same version (four downloads an hour at most)."""
EARLY_S = 0.05
"""How early a poller round may come and still try the version: an event loop's timer can fire a
millisecond before the round falls due (uvloop counts whole milliseconds), which must not cost a
whole round."""
clock = time.monotonic
"""Where the waits are read from (a test sets its own)."""


@dataclass(frozen=True)
class FailedVersion:
    """The version (the source's fingerprint) that failed, how often in a row, and when to try it
    again."""

    fingerprint: str
    failures: int
    retry_at: float
    """``clock()`` (``time.monotonic``) from which it may be fetched again."""

    def held_back(self, fingerprint: str) -> bool:
        """True while ``fingerprint`` is this failed version and its wait has not passed."""
        return fingerprint == self.fingerprint and clock() < self.retry_at - EARLY_S


def wait_after(failures: int, first: float = FIRST_RETRY_S) -> float:
    """Seconds to wait after the ``failures``-th failure in a row of one version, the first wait
    being ``first``."""
    return min(first * 2 ** max(failures - 1, 0), max(MAX_RETRY_S, first))


def failed_again(
    previous: FailedVersion | None, fingerprint: str, first: float = FIRST_RETRY_S
) -> FailedVersion:
    """The record after ``fingerprint`` failed once more (a first failure when ``previous`` was
    another version or none)."""
    failures = previous.failures + 1 if previous is not None and previous.fingerprint == fingerprint else 1
    return FailedVersion(fingerprint, failures, clock() + wait_after(failures, first))

"""Reloading a running service's config files in place: the record of what it read, and the check
that a reload took.

A service that declares ``reload`` (``stacks/services.yaml``: Prometheus, Alertmanager) reads those
files again on ``SIGHUP``. The planner reloads it instead of recreating it when those files alone
changed, so its queries, scrapes and rule evaluation go on with no outage (a restart's grows with
the write-ahead log Prometheus replays) and Alertmanager's aggregation groups keep their timers.
To know which files a running service read, every runtime records their digests here when it starts
the service and after a reload took (``remember``), and the engine reads them back beside what the
runtime observes (``loaded``). The record is a file of the state folder, the same for every
runtime: a container's labels cannot change once it is created.

A reload is confirmed, not assumed: Prometheus and Alertmanager refuse a bad file, go on with the
config they had, and say so only in their log and in the gauge pair ``METRIC_successful`` /
``METRIC_success_timestamp_seconds``. ``confirm`` reads those from the service's metrics page
until they show this reload took, and raises with the service's log when they show it did not;
``reload_in_place`` then puts the files it had back, so that what is on disk is what runs (and
what a restart would read), and the record still says the new files are not read.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.health import fetch
from appliance.runtimes.atomic_files import write_atomic
from appliance.stack import RenderedService, config_dir

RECORDS = Path("run") / "loaded"
"""Under the state folder: ``NAME.json``, the digests of the reload files service NAME read."""
CONFIRM_SECONDS = 30.0
"""How long a reload may take to show in the gauges (Prometheus reads its rules and scrape
config in well under a second; a slow disk or a large rule file takes longer)."""
SIGNAL = "SIGHUP"
"""What both servers read their files again on (neither needs its HTTP lifecycle API, kept off)."""


def record_path(state_dir: Path, name: str) -> Path:
    return state_dir / RECORDS / f"{name}.json"


def loaded(state_dir: Path, name: str) -> dict[str, str] | None:
    """The digests of the reload files ``name`` last read (None: not recorded, e.g. a service
    started by a release before this record, whose files then count as not read)."""
    try:
        data = json.loads(record_path(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items()}


def remember(state_dir: Path, svc: RenderedService) -> None:
    """Record that ``svc``'s process has read its reload files as rendered now (after a start, or
    a reload ``confirm`` passed). Nothing for a service without reload files."""
    if svc.reload is None:
        return
    write_atomic(record_path(state_dir, svc.name), json.dumps(svc.reload_digests, sort_keys=True))


def reload_in_place(
    svc: RenderedService,
    state_dir: Path,
    write_files: Callable[[], None],
    send_signal: Callable[[], None],
    log_tail: Callable[[], str],
) -> None:
    """A runtime's reload of ``svc``: its files written (``write_files``, into
    ``STATE/config/NAME``, which its process reads), the signal sent, the reload confirmed and
    recorded; on a refusal the reload files it had are written back before the error leaves."""
    folder = config_dir(state_dir, svc.name)
    files = [folder / name for name in svc.reload_digests]
    kept = {path: path.read_bytes() for path in files if path.exists()}
    before = reading(svc)
    _after_the_last_success(before)
    write_files()
    sent_at = time.time()
    send_signal()
    try:
        confirm(svc, before, sent_at, log_tail)
    except ApplianceError:
        for path, data in kept.items():
            write_atomic(path, data)
        raise
    remember(state_dir, svc)


def _after_the_last_success(before: Reading | None) -> None:
    """The gauges stamp whole seconds: a reload that succeeded in the second of the last success
    (a start or a reload just before) could not be told from it, so signal in a later second."""
    if before is not None and before.stamp is not None:
        wait = before.stamp + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


@dataclass(frozen=True)
class Reading:
    """The gauge pair at one moment: did the last reload succeed, and when did the last good one
    end (Unix seconds, whole)."""

    successful: float | None
    stamp: float | None


def _gauge(page: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)", page, re.MULTILINE)
    return float(found.group(1)) if found else None


def reading(svc: RenderedService) -> Reading | None:
    """The service's gauge pair now; None when its metrics page does not answer."""
    assert svc.reload is not None
    try:
        page = fetch(svc.reload.confirm, svc.health)
    except OSError:
        return None
    metric = svc.reload.metric
    return Reading(_gauge(page, f"{metric}_successful"), _gauge(page, f"{metric}_success_timestamp_seconds"))


def confirm(
    svc: RenderedService, before: Reading | None, sent_at: float, log_tail: Callable[[], str]
) -> None:
    """Wait until ``svc`` shows the reload signalled at ``sent_at`` took: its gauges say the last
    reload succeeded and ended no earlier than the signal (whole seconds, so the second it was sent
    counts). Raise when they say it failed (``successful`` went from 1 to 0) or show nothing new
    within ``CONFIRM_SECONDS``; the service then still runs the config it had."""
    assert svc.reload is not None
    deadline = time.monotonic() + CONFIRM_SECONDS
    now: Reading | None = None
    while time.monotonic() < deadline:
        now = reading(svc)
        if now is not None and now.successful == 1 and (now.stamp or 0) >= math.floor(sent_at):
            return
        if now is not None and now.successful == 0 and (before is None or before.successful != 0):
            break
        time.sleep(0.2)
    files = ", ".join(svc.reload.files)
    if now is None:  # not a refusal: the server does not answer; a restart reads the new files
        raise ApplianceError(
            f"{svc.name} did not confirm a reload of its new {files} on {SIGNAL} (no answer from its "
            f"metrics page {svc.reload.confirm}). Its log ends:\n{log_tail()}",
            fix=f"`appliance restart {svc.name}` starts it again with the new files",
        )
    raise ApplianceError(
        f"{svc.name} did not take its new {files} on {SIGNAL} ({svc.reload.metric}_successful "
        f"{now.successful}); it goes on with the config it had. Its log ends:\n{log_tail()}",
        fix=f"read `appliance logs {svc.name}` for the line that names the problem, correct what the "
        "file is rendered from, then run `appliance up` again",
    )

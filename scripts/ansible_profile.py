#!/usr/bin/env python3
"""Where a cluster run's time went: wall time per task, summed over the run's event files.

ansible-runner keeps every `appliance cluster` run's events with timestamps in
``STATE/cluster/runner/ACTION/artifacts/RUN/job_events``. A task's wall time is the time from its
start to the next task's (or play's) start, across all the hosts it ran on, so a loop over files
or a task repeated in every play shows at the top.

    python3 scripts/ansible_profile.py STATE/cluster/runner/up/artifacts/RUN [N]
"""

from __future__ import annotations

import collections
import itertools
import json
import sys
from datetime import datetime
from pathlib import Path

STARTS = ("playbook_on_task_start", "playbook_on_play_start", "playbook_on_stats")


def task_times(
    run: Path,
) -> tuple[float, collections.Counter[tuple[str, str, str]], collections.Counter[tuple[str, str, str]]]:
    """The run's total seconds, and per (play, task, file:line) its seconds and how often it ran."""
    events = sorted(
        (json.loads(p.read_text()) for p in (run / "job_events").glob("*.json")), key=lambda e: e["counter"]
    )
    starts = []
    for event in events:
        if event["event"] in STARTS:
            data = event.get("event_data", {})
            where = data.get("task_path", "").split("/roles/")[-1]
            key = (data.get("play", "")[:30], data.get("task", "")[:60], where)
            starts.append((datetime.fromisoformat(event["created"]), key))
    seconds: collections.Counter[tuple[str, str, str]] = collections.Counter()
    runs: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for (began, key), (ended, _) in itertools.pairwise(starts):
        seconds[key] += (ended - began).total_seconds()
        runs[key] += 1
    total = (starts[-1][0] - starts[0][0]).total_seconds() if starts else 0.0
    return total, seconds, runs


def main() -> int:
    if len(sys.argv) < 2 or not (Path(sys.argv[1]) / "job_events").is_dir():
        print(__doc__, file=sys.stderr)
        return 2
    total, seconds, runs = task_times(Path(sys.argv[1]))
    print(f"total {total:.0f} s")
    for key, spent in seconds.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 30):
        print(f"{spent:6.1f} s  x{runs[key]}  {key[0]} | {key[1]} | {key[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

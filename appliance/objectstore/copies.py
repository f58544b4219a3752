"""Whether every volume of the store has the copies its replication asks for, from the master.

A cluster whose storage hosts hold ``object_store.replication`` copies asks, on every ``cluster
up``, whether a storage host came back empty or was lost (roles/appliance_seaweedfs/tasks/ready.yml).
SeaweedFS's own ``volume.fix.replication`` answers, but waits a fixed 15 s before it reads the
topology, so that heartbeats after a change are in: 15 s of every ``up``, even when every copy
is in place (measured: 15.6 s of a 72 s ``up`` of the three-host storage lab). The master's
``/vol/status`` lists each volume server's volumes with their placement at once; read after the
store's readiness (the master lists every volume server; one just restarted: below), it tells
in milliseconds whether any volume is short. Only then does the role ask SeaweedFS's shell,
which also knows where a missing copy can go, to copy them back, and then this count again to
check it did.

A volume server just restarted can be listed before the master has taken in every volume it
holds (seen in CI: an ``up`` that restarted the storage hosts one at a time found a volume short
right after the second came back, and started a repair it did not need). So a short count is read
again, once a second for ``--settle`` seconds (5 by default), and reported only if it stays short;
a store with every copy in place answers at the first read, as before.

Usage: ``python -m appliance.objectstore.copies --master URL``: exit 0 when every volume has its
copies, 3 when some are short (one line each on stdout), 1 when the master cannot be read.
Standard library only: it runs on the control host from the appliance's virtualenv.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
from collections import Counter
from typing import Any

from appliance.objectstore.ready import fetch

SHORT = 3
"""The exit status when some volume has fewer copies than asked: not an error of the check."""
TIMEOUT_SECONDS = 10.0
SETTLE_SECONDS = 5.0
"""How long a short count is read again before it is reported (see the module's docstring)."""


def copies_asked(placement: dict[str, Any] | None) -> int:
    """Copies a volume's replica placement asks for: itself, plus those on other servers of its
    rack (``node``), other racks (``rack``) and other data centres (``dc``), SeaweedFS's "xyz"."""
    placement = placement or {}
    return 1 + sum(int(placement.get(key) or 0) for key in ("node", "rack", "dc"))


def short_volumes(status: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Volume id -> (copies held, copies asked) for each volume with fewer copies than asked, from
    the master's ``/vol/status`` (data centres -> racks -> volume servers -> volumes)."""
    held: Counter[int] = Counter()
    asked: dict[int, int] = {}
    centres = (status.get("Volumes") or {}).get("DataCenters") or {}
    for racks in centres.values():
        for servers in (racks or {}).values():
            for volumes in (servers or {}).values():
                for volume in volumes or []:
                    vid = int(volume["Id"])
                    held[vid] += 1
                    asked[vid] = max(asked.get(vid, 1), copies_asked(volume.get("ReplicaPlacement")))
    return {vid: (held[vid], asked[vid]) for vid in sorted(asked) if held[vid] < asked[vid]}


def read_status(master: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fetch(f"{master.rstrip('/')}/vol/status", TIMEOUT_SECONDS, 64 << 20))
    return found


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="appliance.objectstore.copies")
    parser.add_argument("--master", required=True, help="the master's URL")
    parser.add_argument(
        "--settle", type=float, default=SETTLE_SECONDS, help="seconds a short count is read again"
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.settle
    while True:
        try:
            short = short_volumes(read_status(args.master))
        except (OSError, urllib.error.URLError, ValueError) as err:
            print(f"master {args.master}: {getattr(err, 'reason', err)}", file=sys.stderr)
            return 1
        if not short or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    for vid, (held, asked) in short.items():
        print(f"volume {vid}: {held} of {asked} copies, under replicated")
    if short:
        return SHORT
    print("every volume has the copies its replication asks for")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The store's health check: its S3 gateway answers *and* its master knows a volume server.

The S3 gateway's ``/healthz`` answers as soon as the gateway listens, but after a restart the
master learns where the volumes are only from the volume server's first heartbeat, a second or
three later; until then every read answers ``InternalError`` (measured: 3.2 s after ``up`` here).
A stack that called the store healthy then would start MLflow, the buckets job and the model
server against a store that fails their first reads. The heartbeat carries every volume the
server holds, so once the master lists the volume server, it knows all of them. In a cluster
whose storage hosts run the volume servers, the store keeps ``object_store.replication`` copies of
each object on distinct volume servers, so it is ready once the master lists that many
(``--volume-servers``): before then a write finds too few servers for its copies. A storage host's
volume server restarted in a rolling update is back once the master lists it by name
(``--volume-server HOST:PORT``): only then may the next host's go, or the objects whose copies
the two hold would have none that reads.

Usage: ``python -m appliance.objectstore.ready --s3 URL --master URL [--volume-servers N]
[--volume-server HOST:PORT]`` (exit 0 when ready; the reason on stderr otherwise). Standard
library only: it runs every half second while ``up`` waits.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 3.0


def volume_servers(status: dict[str, Any]) -> list[str]:
    """The volume servers in a master's ``/dir/status`` answer (``Topology`` → data centres →
    racks → data nodes), by URL."""
    topology = status.get("Topology") or {}
    return [
        str(node.get("Url", "?"))
        for centre in topology.get("DataCenters") or []
        for rack in centre.get("Racks") or []
        for node in rack.get("DataNodes") or []
    ]


def fetch(url: str, timeout: float = TIMEOUT_SECONDS, limit: int = 1 << 20) -> bytes:
    """``url``'s body (at most ``limit`` bytes), around any proxy the environment names: the
    store's master and gateway are on this host or the cluster's network."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read(limit)
        return body


def check(s3: str, master: str, wanted: int = 1, server: str = "") -> str | None:
    """None when ready (the master lists at least ``wanted`` volume servers, ``server`` among them
    when given), else what is not."""
    try:
        fetch(f"{s3.rstrip('/')}/healthz")
    except (OSError, urllib.error.URLError) as err:
        return f"S3 gateway {s3}: {getattr(err, 'reason', err)}"
    try:
        status = json.loads(fetch(f"{master.rstrip('/')}/dir/status"))
    except (OSError, urllib.error.URLError, ValueError) as err:
        return f"master {master}: {getattr(err, 'reason', err)}"
    known = volume_servers(status)
    if not known:
        return f"master {master} knows no volume server yet (waiting for its first heartbeat)"
    if len(known) < wanted:
        return (
            f"master {master} knows {len(known)} of the {wanted} volume servers the replication needs "
            f"({', '.join(known)}); waiting for the others' heartbeats"
        )
    if server and server not in known:
        return f"master {master} does not list the volume server {server} yet ({', '.join(known)})"
    return None


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="appliance.objectstore.ready")
    parser.add_argument("--s3", required=True, help="the S3 gateway's URL")
    parser.add_argument("--master", required=True, help="the master's URL")
    parser.add_argument(
        "--volume-servers", type=int, default=1, help="volume servers the master must list (default 1)"
    )
    parser.add_argument(
        "--volume-server", default="", metavar="HOST:PORT", help="a volume server the master must list"
    )
    args = parser.parse_args(argv)
    problem = check(args.s3, args.master, args.volume_servers, args.volume_server)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    among = f", {args.volume_server} among them" if args.volume_server else ""
    print(f"S3 gateway answers; the master knows {args.volume_servers} or more volume server(s){among}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""This host's TCP sockets as the kernel lists them (/proc/net/tcp and tcp6), read in one place.

Two decisions rest on them: which listening socket of an old model server to take over during
an upgrade (appliance/runtimes/handover.py, by inode), and whether nginx still holds a
connection to a draining replica (appliance/workloads/serving/supervisor.py, by state). Reading
the tables costs no subprocess (``ss``) and no dependency; IPv4 and IPv6 alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ESTABLISHED = "01"
SYN_RECV = "03"
LISTEN = "0A"
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


@dataclass(frozen=True)
class TcpSocket:
    """One row: the local port, the state (hex as the kernel writes it) and the socket's inode."""

    port: int
    state: str
    inode: int


def tcp_sockets(tables: tuple[str, ...] = TABLES) -> Iterator[TcpSocket]:
    """Every TCP socket of this network namespace; a table that cannot be read is skipped."""
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            yield TcpSocket(int(fields[1].rsplit(":", 1)[1], 16), fields[3], int(fields[9]))

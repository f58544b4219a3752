"""This host's TCP sockets as the kernel lists them (/proc/net/tcp and tcp6), read in one place.

Three decisions rest on them: which listening socket of an old model server to take over during
an upgrade (appliance/runtimes/handover.py, by inode), whether nginx still holds a connection to
a draining replica (appliance/workloads/serving/supervisor.py, by state), and whether a model
server's caller is a process of its own user (appliance/workloads/serving/peer.py, by the
addresses and the owner). Reading the tables costs no subprocess (``ss``) and no dependency;
IPv4 and IPv6 alike.
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
    """One row: the local port, the state (hex as the kernel writes it), the socket's inode, and
    the two addresses as the kernel writes them (hex words and port) and the owner's uid."""

    port: int
    state: str
    inode: int
    local: str = ""
    remote: str = ""
    uid: int = -1


def tcp_sockets(tables: tuple[str | Path, ...] = TABLES) -> Iterator[TcpSocket]:
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
            port = int(fields[1].rsplit(":", 1)[1], 16)
            yield TcpSocket(port, fields[3], int(fields[9]), fields[1], fields[2], int(fields[7]))

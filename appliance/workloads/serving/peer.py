"""Who is at the other end of a connection: a process of this host running as the server's own
user, or anyone else.

Why: Triton's shared-memory extension lets a caller make the server read and write POSIX
shared memory of the server's user. A bearer token says a caller may infer; it says nothing of
where the caller runs, and the token also reaches the server from other hosts (its private
address in a cluster, the TLS gateway). So the extension is open only to callers the kernel
vouches for: the connection's peer is a loopback address, and the client's end of that TCP
connection (its row in /proc/net/tcp or tcp6, read by ``appliance.procnet``) belongs to the
server's effective user. A request the TLS gateway or the replica balancer forwarded (both set
``FORWARDED_HEADER``, on gRPC too) is never one, whoever runs their nginx. The answer is worked
out on first use and kept for the connection.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path
from typing import Any

from appliance.procnet import ESTABLISHED, TABLES, tcp_sockets

FORWARDED_HEADER = "x-forwarded-proto"
"""The header the TLS gateway and the replica balancer add to what they forward (REST and
gRPC): its presence marks a request relayed by nginx, whoever sent it."""


class Peer:
    """One connection's two addresses, and whether its client is this host's server user."""

    __slots__ = ("_local", "_remote", "_same_user")

    def __init__(self, local: Any, remote: Any) -> None:
        self._local = local
        self._remote = remote
        self._same_user: bool | None = None

    @classmethod
    def of(cls, transport: Any) -> Peer:
        return cls(transport.get_extra_info("sockname"), transport.get_extra_info("peername"))

    @classmethod
    def of_socket(cls, sock: socket.socket) -> Peer:
        return cls(sock.getsockname(), sock.getpeername())

    def same_user(self) -> bool:
        """A loopback client whose socket belongs to this process's effective user."""
        if self._same_user is None:
            self._same_user = (
                _is_loopback(self._remote) and socket_owner(self._local, self._remote) == os.geteuid()
            )
        return self._same_user


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple) or not address:
        return False
    try:
        ip = ipaddress.ip_address(address[0].split("%")[0])
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def socket_owner(
    local: tuple[Any, ...], remote: tuple[Any, ...], tables: tuple[str | Path, ...] = TABLES
) -> int | None:
    """The uid owning the client's end of a TCP connection on this host: the socket whose local
    address is our peer's and whose remote address is ours, established, and only one such;
    None otherwise. An IPv4 connection's client may hold an IPv6 socket (gRPC's C core does):
    its row is in tcp6, with both addresses IPv4-mapped, so both spellings are looked for."""
    wanted = {(_proc_address(remote, v6), _proc_address(local, v6)) for v6 in (False, True)}
    owners = [s.uid for s in tcp_sockets(tables) if s.state == ESTABLISHED and (s.local, s.remote) in wanted]
    return owners[0] if len(owners) == 1 else None


def _proc_address(address: tuple[Any, ...], v6: bool) -> str:
    """An address as /proc/net/tcp (or, ``v6``, tcp6) writes it: the IP as 32-bit words in host
    order, then the port; an IPv4 address in tcp6 is IPv4-mapped (::ffff:a.b.c.d)."""
    host, port = address[0].split("%")[0], address[1]
    ip = ipaddress.ip_address(host)
    if v6 and ip.version == 4:
        ip = ipaddress.IPv6Address(f"::ffff:{ip}")
    elif not v6 and isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    raw = ip.packed
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"

"""Stop listening without refusing a connection already taken: how a replica leaves the balancer.

A replica being drained (SIGUSR1 from the serving supervisor) stops taking new connections and
keeps serving the ones it has; the balancer (nginx) sees its new connections refused and sends
those requests to another replica, and closes its kept-alive ones itself (``keepalive_time``,
balancer.py), so no request is ever cut. Closing a listening socket outright is not enough:
connections the kernel completed but the server had not yet accepted are reset, after nginx
sent its request on them, and nginx cannot replay a gRPC call (it streams the body unbuffered).
So first a socket filter drops new SYNs (the client's kernel resends one a second later, by when
the socket is closed and the answer is a refusal), the accept queue is emptied by the server's
own accept loop, and only then are the sockets closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>, the same on every Linux architecture
_DROP_SYN = [  # classic BPF on the TCP header: a SYN without ACK -> drop (0), anything else -> keep
    (0x30, 0, 0, 13),  # ldb [13]            TCP flags
    (0x54, 0, 0, 0x12),  # and #0x12           SYN | ACK
    (0x15, 0, 1, 0x02),  # jeq #0x02           SYN alone?
    (0x06, 0, 0, 0),  # ret #0              drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1             keep
]
_SETTLE_S = 0.005
"""After the filter: time for handshakes already answered to complete into the accept queue."""


def refuse_new_connections(sock: Any) -> None:
    """New connection attempts to ``sock`` (listening) are dropped from now on."""
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in _DROP_SYN))
    prog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)  # the kernel copies the program


def accept_queue(sock: Any) -> int:
    """Connections completed but not accepted yet (``tcpi_unacked`` of a listening socket)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


async def stop_listening(servers: Sequence[Any], timeout: float = 2.0) -> None:
    """Close ``servers`` (asyncio servers) without resetting a connection the kernel completed."""
    socks = [s for srv in servers for s in srv.sockets]
    for sock in socks:
        try:
            refuse_new_connections(sock)
        except OSError as err:  # no filter: closing may then reset a connection or two
            log.warning("could not filter new connections before closing: %s", err)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(_SETTLE_S)
    while loop.time() < deadline:
        try:
            if not any(accept_queue(s) for s in socks):
                break
        except OSError:
            break
        await asyncio.sleep(0.001)  # the server's own accept loop takes them
    for srv in servers:
        srv.close()


def drain_on_signal(servers: Sequence[Any], not_ready: Callable[[], None]) -> None:
    """SIGUSR1: readiness off, listeners closed as above; open connections keep being served
    until their clients close them (SIGTERM then stops the server as usual)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def begin() -> None:
        not_ready()
        log.info("draining: no new connections; serving the open ones until they close")
        task = loop.create_task(stop_listening(servers))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGUSR1, begin)

"""Keep a service's listening sockets open while it is replaced, and hand them to its successor.

Replacing the model server used to close its ports for the seconds the new one takes to import
and load its models: every request in between was refused (843 of 6059 in the upgrade test).
Its predecessor may be a release that knows nothing of a handover, so this takes the sockets
without its help: before the old process is stopped, the runtime duplicates its listening
sockets into its own process (``pidfd_getfd``, Linux 5.6 or later, same user). When the old
server then closes its copy, the socket itself stays open: the kernel keeps completing
connections into its accept queue, so clients wait instead of being refused. The new server,
once its models are loaded, asks for the sockets over a Unix socket (``HANDOVER_ENV`` names it,
0600 in the state's run folder) and accepts on them: the same socket, no moment without a
listener. From this release on the model server also lends copies of its sockets to whoever
asks at that path (``offer``), so the next release's runtime gets them without rights over its
process; ``pidfd_getfd`` is for releases that do not lend. Where the sockets can be had neither
way (an older kernel, no rights over the process) the runtime says so and replaces the service
as before.

The held sockets are given once, to the first process that asks, and closed after
``HOLD_S`` in any case, so a successor that never asks cannot keep the ports from a later start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from appliance.procnet import LISTEN, tcp_sockets

log = logging.getLogger(__name__)

HANDOVER_ENV = "APPLIANCE_HANDOVER_SOCKET"
OFFER_ENV = "APPLIANCE_HANDOVER_OFFER"
"""Set for a standby server (see LocalRuntime): once ready it offers its own listening sockets at
this path, and stops (drains and exits) as soon as its successor has taken them."""
TAKES_OVER = {"serving": ("http", "grpc")}
"""Services whose process takes its listening sockets over, and which of their ports: the model
server alone (its metrics port is not held: scrapes may miss a beat, clients do not)."""
HOLD_S = 600.0
ASK_TIMEOUT_S = 5.0
_SYS_PIDFD_GETFD = 438  # the same number on every architecture (the generic syscall table)


def applies(name: str, command: list[str]) -> bool:
    """Whether the service's new process listens on its ports itself: the model server, unless
    it runs replicas behind a balancer (``--max-replicas`` above 1), whose nginx binds them."""
    if name not in TAKES_OVER:
        return False
    if "--max-replicas" in command[:-1]:
        return command[command.index("--max-replicas") + 1] == "1"
    return True


def _identity(path: Path) -> tuple[int, int]:
    """A socket file's inode and change time: a new file may get the inode number of one just
    removed, not also its time."""
    st = path.stat()
    return st.st_ino, st.st_ctime_ns


def offered_again(holder: Holder) -> bool:
    """Whether the process that took ``holder``'s sockets offers them at the same path: a
    standby that is ready."""
    try:
        return holder.given.is_set() and _identity(holder.path) != holder.identity
    except OSError:
        return False


class HandoverUnavailableError(OSError):
    """The listening sockets could not be taken from the running process."""


def listening_inodes(ports: Iterable[int]) -> dict[int, int]:
    """Socket inode -> port, for the TCP sockets listening on ``ports`` (IPv4 and IPv6)."""
    wanted = set(ports)
    return {s.inode: s.port for s in tcp_sockets() if s.state == LISTEN and s.port in wanted}


def _pidfd_getfd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if new < 0:
            err = ctypes.get_errno()
            raise HandoverUnavailableError(err, f"pidfd_getfd of process {pid}: {os.strerror(err)}")
        return int(new)
    finally:
        os.close(pidfd)


def take(pids: Iterable[int], ports: Iterable[int]) -> dict[int, socket.socket]:
    """Duplicates of the sockets listening on ``ports`` that ``pids`` hold, by port."""
    inodes = listening_inodes(ports)
    taken: dict[int, socket.socket] = {}
    try:
        for pid in pids:
            fd_dir = Path(f"/proc/{pid}/fd")
            try:
                entries = list(fd_dir.iterdir())
            except OSError:
                continue
            for entry in entries:
                try:
                    target = os.readlink(entry)
                except OSError:
                    continue
                if not target.startswith("socket:["):
                    continue
                port = inodes.get(int(target[8:-1]))
                if port is None or port in taken:
                    continue
                taken[port] = socket.socket(fileno=_pidfd_getfd(pid, int(entry.name)))
    except (OSError, AttributeError) as err:
        for sock in taken.values():
            sock.close()
        raise HandoverUnavailableError(str(err)) from err
    return taken


class Holder:
    """Holds listening sockets and gives them to the first process asking at ``path`` (to each
    one asking, with ``keep``: a running server lending copies of its own)."""

    def __init__(
        self,
        path: Path,
        sockets: dict[int, socket.socket],
        hold_s: float | None = HOLD_S,
        keep: bool = False,
    ) -> None:
        self.path, self.sockets, self.hold_s, self.keep = path, sockets, hold_s, keep
        self.given = threading.Event()
        self.closed = threading.Event()
        path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._server.bind(str(path))
        finally:
            os.umask(old_umask)
        self.identity = _identity(path)
        self._server.listen(4)
        self._thread = threading.Thread(target=self._serve, name=f"handover {path.name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = None if self.hold_s is None else time.monotonic() + self.hold_s
        try:
            while deadline is None or time.monotonic() < deadline:
                self._server.settimeout(None if deadline is None else max(0.1, deadline - time.monotonic()))
                try:
                    conn, _ = self._server.accept()
                except TimeoutError:
                    break
                with conn:
                    if self._give(conn):
                        self.given.set()
                        if not self.keep:
                            return
        except OSError as err:
            log.warning("handover at %s ended: %s", self.path, err)
        finally:
            self.close()

    def _give(self, conn: socket.socket) -> bool:
        conn.settimeout(ASK_TIMEOUT_S)
        try:
            asked = json.loads(conn.recv(4096) or b"{}").get("ports", [])
        except (OSError, ValueError):
            return False
        ports = [p for p in asked if p in self.sockets]
        header = json.dumps({"ports": ports}).encode()
        socket.send_fds(conn, [header], [self.sockets[p].fileno() for p in ports])
        return True

    def close(self) -> None:
        """Close the held sockets (the successor has its own copies) and the Unix socket."""
        self._server.close()
        with contextlib.suppress(OSError):
            if _identity(self.path) == self.identity:  # not a successor's offer at the same path
                self.path.unlink()
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}
        self.closed.set()


def offer(
    path: str | None, servers: Iterable[asyncio.Server], on_given: Callable[[], object] | None = None
) -> Holder | None:
    """A running server's side: hold copies of ``servers``' listening sockets at ``path``.

    A standby (``on_given``) gives them once and then stops: ``on_given`` is called from another
    thread. Any other server lends them to whoever asks and serves on, so that the next release's
    runtime takes them without needing rights over this process (``lend``)."""
    if not path:
        return None
    sockets: dict[int, socket.socket] = {}
    for server in servers:
        for sock in server.sockets:
            copy = socket.fromfd(sock.fileno(), sock.family, sock.type)
            sockets[copy.getsockname()[1]] = copy
    if on_given is None:
        return Holder(Path(path), sockets, hold_s=None, keep=True)
    holder = Holder(Path(path), sockets)
    then = on_given

    def wait() -> None:
        holder.given.wait()
        then()

    threading.Thread(target=wait, name="handover offer", daemon=True).start()
    return holder


def receive(path: str | None, host: str | None, ports: Iterable[int]) -> dict[int, socket.socket]:
    """The successor's side: listening sockets for ``ports`` from a holder at ``path``, by port.

    Nothing (an empty dict: bind as usual) when no holder is there; a socket bound elsewhere
    than ``host`` (the address changed with the new configuration) is closed, not used (None:
    any address, the runtime asking a running server).
    """
    wanted = [p for p in ports if p > 0]
    if not path or not wanted or not os.path.exists(path):
        return {}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(ASK_TIMEOUT_S)
            conn.connect(path)
            conn.sendall(json.dumps({"ports": wanted}).encode())
            header, fds, _flags, _addr = socket.recv_fds(conn, 4096, len(wanted))
    except (OSError, ValueError) as err:
        log.warning("no listening sockets from %s (%s): binding the ports anew", path, err)
        return {}
    given = json.loads(header or b"{}").get("ports", [])
    out: dict[int, socket.socket] = {}
    for port, fd in zip(given, fds, strict=False):
        sock = socket.socket(fileno=fd)
        bound = sock.getsockname()
        if (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            and bound[1] == port
            and host in (None, bound[0])
        ):
            sock.setblocking(False)
            out[port] = sock
        else:
            sock.close()
    log.info("took over the listening sockets of ports %s from the previous server", sorted(out))
    return out

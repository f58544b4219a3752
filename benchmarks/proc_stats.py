"""What the benchmarks read of the machine (a free loopback port, a process's CPU time) and the
closed-loop HTTP load several of them drive."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time process ``pid`` has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def closed_loop(
    clients: int,
    seconds: float,
    connect: Callable[[], httpx.Client],
    send: Callable[[httpx.Client, int, int], httpx.Response],
) -> int:
    """``clients`` threads, each with its own keep-alive client (``connect``), calling
    ``send(client, thread, n)`` back to back for ``seconds``; the number of answers. Every answer
    must be a 200: the first that is not ends the run (SystemExit naming it)."""
    counts = [0] * clients
    failures: list[str] = []
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with connect() as http:
            while time.monotonic() < stop and not failures:
                reply = send(http, i, counts[i])
                if reply.status_code != 200:
                    asked = f"{reply.request.method} {reply.request.url.path}"
                    failures.append(f"{asked}: {reply.status_code} {reply.text[:200]}")
                    return
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"a request failed: {failures[0]}")
    return sum(counts)

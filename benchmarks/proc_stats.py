"""What the benchmarks read of the machine (a free loopback port, a process's CPU time) and the
closed-loop HTTP load several of them drive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, name: str, log: Path, seconds: float = 180, **request: object
) -> None:
    """Wait until a server the benchmark started answers ``GET url`` with 200 (``request``: httpx's
    keywords, headers for one); SystemExit naming its log if it exits or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name}: the server exited; see {log}")
        try:
            if httpx.get(url, timeout=2, **request).status_code == 200:  # type: ignore[arg-type]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{name}: not ready within {seconds:.0f} s; see {log}")


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


Totals = dict[tuple[str, str], list[float]]
"""(load, arm) -> [answers, seconds, CPU seconds of the measured process], summed over rounds."""


def alternating_rounds(
    loads: tuple[str, ...],
    arms: tuple[str, ...],
    rounds: int,
    measure: Callable[[str, str], tuple[int, float, float]],
) -> Totals:
    """Each load on each arm in turn, ``rounds`` times, the arms' order reversed every other round
    (A-B, then B-A: a machine growing slower or faster weighs on both); ``measure(load, arm)``
    gives one point's answers, seconds and CPU seconds."""
    totals: Totals = {}
    for load in loads:
        for round_ in range(rounds):
            for arm in arms if round_ % 2 == 0 else arms[::-1]:
                print(f"{load}, {arm}, round {round_ + 1}", file=sys.stderr, flush=True)
                total = totals.setdefault((load, arm), [0.0, 0.0, 0.0])
                for at, value in enumerate(measure(load, arm)):
                    total[at] += value
    return totals


def print_ratios(totals: Totals, loads: tuple[str, ...], arms: tuple[str, ...], what: str) -> None:
    """A table of ``what`` per second and CPU milliseconds per ``what`` for each load and arm, both
    also as ratios to the first arm (the baseline)."""
    print(f"\n{'load':<9} {'arm':<12} {what + '/s':>9} {'x':>6} {'CPU ms/' + what:>20} {'x':>6}")
    for load in loads:
        base_count, base_seconds, base_cpu = totals[load, arms[0]]
        base_rate, base_ms = base_count / base_seconds, 1000 * base_cpu / max(base_count, 1)
        for arm in arms:
            done, seconds, cpu = totals[load, arm]
            rate, ms = done / seconds, 1000 * cpu / max(done, 1)
            print(f"{load:<9} {arm:<12} {rate:9.1f} {rate / base_rate:6.2f} {ms:20.2f} {ms / base_ms:6.2f}")

"""What a balancer in front of one replica costs per gRPC call: nginx (ours) against HAProxy.

The supervisor balances gRPC with nginx's ``grpc_pass``, which opens an upstream connection for
every call in flight and sends one call on each at a time. HAProxy multiplexes many streams over
one HTTP/2 connection to a backend (``http-reuse always``). This script serves one model with
one replica and sends the same h2load load (``--concurrency`` streams on one client connection)
three ways: to the replica alone, through the supervisor's nginx (one replica, as the stack runs
it with ``serving.max_replicas`` above 1), and through an HAProxy in front of a replica of its
own. It reports requests/s and the CPU per call of the replica and of the balancer apart (every
answer's size checked by the load client; a grpc.aio pass checks the answers themselves).

    .venv/bin/python benchmarks/serving/balancer_hop.py                    # MLP and CNN, c=32
    .venv/bin/python benchmarks/serving/balancer_hop.py --models cnn --concurrency 8

HAProxy comes from Debian (``apt-get install haproxy``; its own service is not used): the
HAProxy point is skipped without it. Its HTTP/2 buffers are raised for the CNN's 48 KB calls
(``HAPROXY_TUNING``): with the 16 KB defaults each such call cost HAProxy 110 us and the replica
222 us here, against 29-36 and 167-172 with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from bench_model import build_named  # noqa: E402

HAPROXY_TUNING = """\
    tune.bufsize 131072
    tune.h2.initial-window-size 4194304
    tune.h2.max-frame-size 131072"""


def haproxy_config(listen_port: int, replica_ports: list[int]) -> str:
    """One h2c frontend on loopback and a backend of the replicas speaking HTTP/2, calls
    multiplexed over its connections to them (``http-reuse always``). A replica is in while its
    port accepts (a TCP check every 200 ms, one failure out, one success in); a call whose
    connection failed or closed unanswered is sent again to another replica (inference has no
    side effects: nginx's ``non_idempotent`` in the supervisor's balancer does the same)."""
    servers = "".join(
        f"    server r{i} 127.0.0.1:{port} proto h2 check inter 200ms fall 1 rise 1\n"
        for i, port in enumerate(replica_ports)
    )
    return f"""\
global
    maxconn 4096
    nbthread 1
{HAPROXY_TUNING}
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
frontend grpc
    bind 127.0.0.1:{listen_port} proto h2
    default_backend replicas
backend replicas
    balance leastconn
    http-reuse always
{servers}"""


def measure(
    port: int, x: np.ndarray, ref: np.ndarray, args: argparse.Namespace,
    cpu: dict[str, Any],
) -> dict[str, float]:  # fmt: skip
    """One load point on ``port``; ``cpu`` names a zero-argument CPU-seconds reader per part."""
    bad, size = asyncio.run(loadgen.grpc_check(port, "mlp", x, run.TOKEN, ref, 8, 1))
    if bad or not size:
        raise RuntimeError(f"answers wrong before the load ({bad} of 8)")
    before = {part: read() for part, read in cpu.items()}
    r = loadgen.run_h2load(port, "mlp", x, run.TOKEN, args.concurrency, args.seconds, args.warmup, 1, size)
    used = {part: read() - before[part] for part, read in cpu.items()}
    bad, _ = asyncio.run(loadgen.grpc_check(port, "mlp", x, run.TOKEN, ref, 64, 8))
    scale = args.seconds / (args.seconds + args.warmup) / max(1, r.requests) * 1e6
    got = {"rps": r.rps, "errors": float(r.errors + bad)}
    got.update({f"{part}_us": seconds * scale for part, seconds in used.items()})
    return got


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return run.start_server(cmd, log, run.ROOT)


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s: {log.read_text()[-2000:]}")


def one_model(
    folder: Path, model: Path, x: np.ndarray, ref: np.ndarray, args: argparse.Namespace, haproxy: str | None
) -> dict[str, dict[str, float]]:
    """The three paths for one model: alone, through HAProxy, through the supervisor's nginx."""
    results: dict[str, dict[str, float]] = {}
    alone = run.ours(folder, model.parent)
    proc = start(alone.cmd, folder / "alone.log")
    try:
        run.wait_ready(alone.http_port, "mlp", proc, args.start_timeout, folder / "alone.log")
        replica = functools.partial(run.session_cpu, proc.pid)
        results["alone"] = measure(alone.grpc_port, x, ref, args, {"replica": replica})
        if haproxy:
            port = run.free_ports(1)[0]
            (folder / "haproxy.cfg").write_text(haproxy_config(port, [alone.grpc_port]))
            balancer = start([haproxy, "-f", str(folder / "haproxy.cfg")], folder / "haproxy.log")
            try:
                wait_listening(port, balancer, folder / "haproxy.log")
                parts: dict[str, Callable[[], float]] = {
                    "replica": replica,
                    "balancer": functools.partial(run.session_cpu, balancer.pid),
                }
                results["HAProxy 2.6"] = measure(port, x, ref, args, parts)
            finally:
                run.stop_group(balancer)
    finally:
        run.stop_group(proc)

    behind = run.ours(folder, model.parent, "1b")
    proc = start(behind.cmd, folder / "nginx.log")
    try:
        run.wait_ready(behind.http_port, "mlp", proc, args.start_timeout, folder / "nginx.log")
        run.wait_replicas(behind.name, args.start_timeout)
        nginx = functools.partial(run.session_cpu, proc.pid, "nginx")
        everything = functools.partial(run.session_cpu, proc.pid)
        parts = {"replica": lambda: everything() - nginx(), "balancer": nginx}
        results["nginx (ours)"] = measure(behind.grpc_port, x, ref, args, parts)
    finally:
        run.stop_group(proc)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--concurrency", type=int, default=32, help="streams in flight on one connection")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    args = ap.parse_args()
    import onnxruntime as ort

    haproxy = find_haproxy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in [m for m in args.models.split(",") if m]:
            folder = Path(tmp) / model_name
            try:
                model, x = build_named(model_name, folder)
            except ValueError as err:
                ap.error(str(err))
            ref = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
            results = one_model(folder, model, x, ref, args, haproxy)
            for how, got in results.items():
                print(
                    f"  {model_name} {how:13s} {got['rps']:8.0f} req/s  "
                    f"replica {got['replica_us']:5.0f} us/call  "
                    f"balancer {got.get('balancer_us', 0):4.0f} us/call  errors {got['errors']:.0f}",
                    flush=True,
                )
                rows.append((model_name, how, got))
    print(
        f"\n| model | path (c={args.concurrency}, one connection) | req/s "
        "| replica CPU us/call | balancer CPU us/call |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for model_name, how, got in rows:
        balancer_us = f"{got['balancer_us']:.0f}" if "balancer_us" in got else "-"
        print(f"| {model_name} | {how} | {got['rps']:.0f} | {got['replica_us']:.0f} | {balancer_us} |")
    if not haproxy:
        print("\n(HAProxy not installed: apt-get install haproxy)")


if __name__ == "__main__":
    main()

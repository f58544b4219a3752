"""Failed gRPC calls while a replica leaves HAProxy's backend: the membership rules it would need.

The supervisor's nginx balancer keeps calls from failing while replicas come and go with a SYN
filter, listening slots and ``keepalive_time`` (balancer.py, drain.py). HAProxy, which
``balancer_hop.py`` measured cheaper per small gRPC call, has its own means: a health check per
slot, and sending a call again to another replica when its connection failed or closed
unanswered (``balancer_hop.haproxy_config``). This script checks whether those alone keep every
call answered: two model servers (the MLP, each alone on its ports) behind HAProxy, h2load's
closed loop (``--concurrency`` streams over ``--connections`` connections, every answer's size
checked), and ``--leave-after`` seconds in one replica leaves in one of three ways:

- ``term``: SIGTERM, the model server's graceful stop (GOAWAY; calls in flight finish);
- ``kill``: SIGKILL, the calls it held lost with its connections;
- ``restart``: SIGTERM, then the same server started again on the same ports a second later.

    .venv/bin/python benchmarks/serving/balancer_drain.py                      # each way, twice
    .venv/bin/python benchmarks/serving/balancer_drain.py --ways kill --runs 5

Needs HAProxy (``apt-get install haproxy``; its own service is not used).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import peers  # noqa: E402
import run  # noqa: E402
from balancer_hop import find_haproxy, haproxy_config, start, wait_listening  # noqa: E402
from bench_model import build_named  # noqa: E402
from request_cost import compute_infer  # noqa: E402

WAYS = ("term", "kill", "restart")


def leave(way: str, replica: peers.Peer, proc: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
    """One replica leaves ``way``; returns the process now serving its slot (or the stopped one)."""
    os.killpg(proc.pid, signal.SIGKILL if way == "kill" else signal.SIGTERM)
    proc.wait(60)
    if way != "restart":
        return proc
    time.sleep(1)
    return start(replica.cmd, log)


def one_run(way: str, folder: Path, args: argparse.Namespace, haproxy: str) -> tuple[int, int, float, int]:
    """(calls, failed calls, requests/s, calls the replica that came back answered) of one run."""
    model, x = build_named("mlp", folder)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
    replicas = [run.ours(folder, model.parent) for _ in range(2)]
    procs = [start(r.cmd, folder / f"replica-{i}.log") for i, r in enumerate(replicas)]
    balancer = None
    try:
        for i, (replica, proc) in enumerate(zip(replicas, procs, strict=True)):
            run.wait_ready(replica.http_port, "mlp", proc, args.start_timeout, folder / f"replica-{i}.log")
        port = run.free_ports(1)[0]
        (folder / "haproxy.cfg").write_text(haproxy_config(port, [r.grpc_port for r in replicas]))
        balancer = start([haproxy, "-f", str(folder / "haproxy.cfg")], folder / "haproxy.log")
        wait_listening(port, balancer, folder / "haproxy.log")
        bad, size = asyncio.run(loadgen.grpc_check(port, "mlp", x, run.TOKEN, ref, 8, 1))
        if bad or not size:
            raise RuntimeError(f"answers wrong before the load ({bad} of 8)")

        def leave_later() -> None:
            time.sleep(args.leave_after)
            procs[0] = leave(way, replicas[0], procs[0], folder / "replica-0-again.log")

        leaving = threading.Thread(target=leave_later, daemon=True)
        leaving.start()
        r = loadgen.run_h2load(
            port, "mlp", x, run.TOKEN, args.concurrency, args.seconds, 0.0, args.connections, size
        )
        leaving.join(60)
        bad, _ = asyncio.run(loadgen.grpc_check(port, "mlp", x, run.TOKEN, ref, 64, 8))
        rejoined = compute_infer(replicas[0].http_port)[0] if way == "restart" else 0
        return r.requests, r.errors + bad, r.rps, rejoined
    finally:
        for proc in [*procs, *([balancer] if balancer else [])]:
            if proc.poll() is None:
                run.stop_group(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ways", default=",".join(WAYS), help=f"comma list of {', '.join(WAYS)}")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--leave-after", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    args = ap.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    if set(ways) - set(WAYS):
        ap.error(f"--ways {args.ways}: use {', '.join(WAYS)}")
    if not args.leave_after < args.seconds:
        ap.error("--leave-after must fall inside --seconds")
    haproxy = find_haproxy()
    if haproxy is None:
        ap.error("HAProxy is not installed: apt-get install haproxy")
    rows = []
    for way in ways:
        for n in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                calls, failed, rps, rejoined = one_run(way, Path(tmp), args, haproxy)
            again = f", {rejoined} answered by the replica started again" if way == "restart" else ""
            print(
                f"  {way:8s} run {n + 1}: {calls} calls, {failed} failed, {rps:.0f} req/s{again}", flush=True
            )
            rows.append((way, calls, failed, rps, rejoined))
    print(f"\n| replica leaves by | calls | failed | req/s (c={args.concurrency}) | after it came back |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for way, calls, failed, rps, rejoined in rows:
        print(f"| {way} | {calls} | {failed} | {rps:.0f} | {rejoined if way == 'restart' else '-'} |")


if __name__ == "__main__":
    main()

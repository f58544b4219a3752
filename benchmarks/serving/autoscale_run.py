"""The autoscaling run: a load that steps from 1 to 32 concurrent clients and back, against the
serving supervisor with the controller's autoscaler (Knative's KPA) deciding the replica count.

Every second it records the clients, the replicas ready in the balancer and the count asked for,
requests/s, p99 latency and failed requests; at the end a table (every 10 s) on stdout, the rows
in benchmarks/results/autoscale-<time>/run.json and, when matplotlib is installed, a plot
(autoscale.png there, copied to benchmarks/autoscale.png with --keep-plot).

    .venv/bin/python benchmarks/serving/autoscale_run.py                    # CNN, 30 s/90 s/150 s
    .venv/bin/python benchmarks/serving/autoscale_run.py --steps 10:1,30:32,60:1 --stable-window 20

Clients are closed loops over keep-alive REST connections (loadgen.py's), each answer checked
for status 200; a connection the server closes counts as a failure and is reopened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import loadgen  # noqa: E402
from bench_model import MODELS, build_named  # noqa: E402

from appliance.answers import Serving  # noqa: E402
from appliance.workloads.controller.autoscale import Autoscaler, KpaSettings  # noqa: E402

TOKEN, ADMIN = "bench-token", "bench-admin"


async def client(
    port: int, request: bytes, active: threading.Event, out: list[tuple[float, float, bool]]
) -> None:
    """One closed-loop client while ``active`` is set: (time, seconds, ok) per request."""
    loop = asyncio.get_running_loop()
    conn: loadgen._Conn | None = None
    while active.is_set():
        t0 = time.monotonic()
        try:
            if conn is None or conn.transport is None or conn.transport.is_closing():
                _t, conn = await loop.create_connection(loadgen._Conn, "127.0.0.1", port)
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            conn.transport.write(request)
            status, _ = await asyncio.wait_for(conn.waiter, 30)
            out.append((t0, time.monotonic() - t0, status == 200))
        except (OSError, ConnectionError, TimeoutError, RuntimeError):
            out.append((t0, time.monotonic() - t0, False))
            conn = None
            await asyncio.sleep(0.01)
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def drive(port: int, request: bytes, steps: list[tuple[float, int]], out: list[Any]) -> None:
    flags: list[threading.Event] = []
    tasks = []
    for seconds, clients in steps:
        while len([f for f in flags if f.is_set()]) < clients:
            f = threading.Event()
            f.set()
            flags.append(f)
            tasks.append(asyncio.get_running_loop().create_task(client(port, request, f, out)))
        for f in [f for f in flags if f.is_set()][clients:]:
            f.clear()
        await asyncio.sleep(seconds)
    for f in flags:
        f.clear()
    await asyncio.gather(*tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, default="cnn")
    ap.add_argument("--steps", default="30:1,90:32,150:1", help="seconds:clients, ...")
    ap.add_argument("--max-replicas", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--target-concurrency", type=float, default=4.0)
    ap.add_argument("--stable-window", type=float, default=60.0)
    ap.add_argument("--scale-down-delay", type=float, default=30.0)
    ap.add_argument("--p99-target-ms", type=float, default=100.0, help="drawn on the plot")
    ap.add_argument("--keep-plot", action="store_true", help="copy the plot to benchmarks/autoscale.png")
    args = ap.parse_args()
    steps = [(float(s.split(":")[0]), int(s.split(":")[1])) for s in args.steps.split(",")]
    work = ROOT / "benchmarks" / "results" / f"autoscale-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    model, x = build_named(args.model, work / "model")
    (work / "token").write_text(TOKEN)
    (work / "admin").write_text(ADMIN)
    http, grpc, admin = loadgen_ports()
    cmd = [
        sys.executable, "-m", "appliance.workloads.serving.supervisor",
        "--min-replicas", "1", "--max-replicas", str(args.max_replicas),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(admin),
        "--admin-token-file", str(work / "admin"), "--run-dir", str(work / "balancer"),
        "--", "--model", f"m={model.parent}", "--token-file", str(work / "token"), "--poll-seconds", "0",
    ]  # fmt: skip
    log = open(work / "supervisor.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    settings = KpaSettings.from_serving(
        Serving(
            min_replicas=1,
            max_replicas=args.max_replicas,
            target_concurrency=args.target_concurrency,
            stable_window=args.stable_window,
            scale_down_delay=args.scale_down_delay,
        )
    )
    base = f"http://127.0.0.1:{admin}"
    scaler = Autoscaler(settings, f"{base}/metrics", f"{base}/replicas", ADMIN)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    try:
        wait_ready(base)
        scaler.start()

        def sample() -> None:
            import httpx

            while not stop.wait(1.0):
                try:
                    st = httpx.get(
                        f"{base}/replicas", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5
                    ).json()
                except httpx.HTTPError:
                    continue
                samples.append({"t": time.monotonic(), "ready": st["ready"], "desired": st["desired"]})

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        requests: list[tuple[float, float, bool]] = []
        t_start = time.monotonic()
        asyncio.run(drive(http, loadgen.rest_request(http, "m", x, TOKEN), steps, requests))
        stop.set()
        sampler.join(5)
    finally:
        scaler.stop()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = per_second(t_start, steps, requests, samples)
    decisions = [d.as_dict() for d in scaler.history]
    (work / "run.json").write_text(
        json.dumps({"args": vars(args), "rows": rows, "decisions": decisions}, indent=1)
    )
    print(table(rows))
    failed = sum(r["failed"] for r in rows)
    print(f"\nrequests {sum(r['requests'] for r in rows)}, failed {failed}; results in {work}")
    png = plot(rows, args.p99_target_ms, work / "autoscale.png")
    if png is not None and args.keep_plot:
        shutil.copy(png, ROOT / "benchmarks" / "autoscale.png")


def loadgen_ports() -> tuple[int, int, int]:
    import socket

    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = tuple(s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    return ports


def wait_ready(base: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = httpx.get(f"{base}/replicas", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=2).json()
            if st["ready"] >= 1:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the supervisor had no ready replica in time")


def per_second(
    t0: float, steps: list[tuple[float, int]], requests: list[tuple[float, float, bool]], samples: list[Any]
) -> list[dict[str, Any]]:
    total = int(sum(s for s, _ in steps))
    rows = []
    for sec in range(total):
        lo, hi = t0 + sec, t0 + sec + 1
        got = [r for r in requests if lo <= r[0] < hi]
        lat = np.array([r[1] for r in got if r[2]])
        near = [s for s in samples if lo <= s["t"] < hi + 1]
        elapsed, clients = 0.0, 0
        for seconds, c in steps:
            if sec < elapsed + seconds:
                clients = c
                break
            elapsed += seconds
        rows.append(
            {
                "second": sec,
                "clients": clients,
                "ready": near[0]["ready"] if near else None,
                "desired": near[0]["desired"] if near else None,
                "requests": len(got),
                "failed": sum(1 for r in got if not r[2]),
                "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], every: int = 10) -> str:
    lines = [
        "| t (s) | clients | replicas ready | asked | req/s | p99 (ms) | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for start in range(0, len(rows), every):
        chunk = rows[start : start + every]
        p99s = [r["p99_ms"] for r in chunk if r["p99_ms"] is not None]
        last = chunk[-1]
        lines.append(
            f"| {start}-{start + len(chunk)} | {last['clients']} | {last['ready']} | {last['desired']} "
            f"| {sum(r['requests'] for r in chunk) / len(chunk):.0f} "
            f"| {max(p99s) if p99s else float('nan'):.1f} | {sum(r['failed'] for r in chunk)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], p99_target: float, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    t = [r["second"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.step(t, [r["clients"] for r in rows], label="clients", where="post")
    a.step(t, [r["ready"] or 0 for r in rows], label="replicas ready", where="post")
    a.step(t, [r["desired"] or 0 for r in rows], label="replicas asked", where="post", linestyle="--")
    a.set_yscale("symlog")
    a.set_ylabel("count")
    a.legend(loc="upper right")
    b.plot(t, [r["p99_ms"] if r["p99_ms"] is not None else np.nan for r in rows], label="p99 (ms)")
    b.axhline(p99_target, color="grey", linestyle=":", label=f"target {p99_target:g} ms")
    failed = [r["second"] for r in rows if r["failed"]]
    if failed:
        b.scatter(failed, [p99_target] * len(failed), color="red", marker="x", label="failed requests")
    b.set_ylabel("p99 latency (ms)")
    b.set_xlabel("seconds")
    b.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


if __name__ == "__main__":
    main()

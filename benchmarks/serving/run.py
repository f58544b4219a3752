"""Side-by-side benchmark of the ONNX model server against raw ONNX Runtime and peer servers.

The load clients of loadgen.py (h2load for gRPC), one model (an MLP exported with onnx.helper:
30 features -> 64 -> 64 -> 2, the breast-cancer shape), the same ONNX Runtime session options
everywhere (1 intra-op, 1 inter-op thread). For each server and protocol it reports p50/p99
latency at concurrency 1 and requests/s at 8 and 32, and the ratio of ours to each peer. It also
reports the CPU time the server's processes spent per request (at c=32 in the table): unlike
requests/s, that barely depends on what else the shared machine is running.

Our server runs as in production: bearer auth on, /metrics on, drift statistics on.

    .venv/bin/python benchmarks/serving/run.py                        # everything, 5 s per point
    .venv/bin/python benchmarks/serving/run.py --peers none --seconds 2
    .venv/bin/python benchmarks/serving/run.py --setup-only           # just build the peer venvs

Numbers are only comparable inside one run (same machine, same moment); results go to
benchmarks/results/serving-<time>.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import peers  # noqa: E402
from bench_model import MODELS, N_IN, build_named, ort_floor, ort_floor_cores  # noqa: E402

from appliance.workloads.serving.config import PROVIDER_NAMES  # noqa: E402

TOKEN = "bench-token"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_ready(port: int, model: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            r = httpx.get(
                f"http://127.0.0.1:{port}/v2/models/{model}/ready",
                timeout=1,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready in {timeout}s: {log.read_text()[-2000:]}")


def ours(
    work: Path, model_dir: Path, replicas: str = "1", provider: str = "cpu", server_cpus: str = ""
) -> peers.Peer:
    """Our server as the stack runs it: ``1`` the model server alone; ``N`` (or ``1b``) N replicas
    behind the supervisor's nginx balancer; on ``provider`` (its ``--execution-provider``), held
    to the cores of ``server_cpus`` (a taskset list) when given."""
    ports = free_ports(3)
    (work / "token").write_text(TOKEN)
    n = int(replicas.rstrip("b"))
    cmd = [
        sys.executable, "-m", "appliance.workloads.serving.supervisor",
        "--min-replicas", str(n), "--max-replicas", str(max(n, 2) if replicas.endswith("b") else n),
        "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
        "--run-dir", str(work / f"balancer-{replicas}"),
        "--", "--model", f"mlp={model_dir}", "--token-file", str(work / "token"),
        "--max-batch-size", "32", "--poll-seconds", "0", "--execution-provider", provider,
    ]  # fmt: skip
    if server_cpus:
        cmd = ["taskset", "-c", server_cpus, *cmd]
    name = "ours" if replicas == "1" else f"ours x{replicas}"
    if name != "ours":
        SUPERVISORS[name] = (ports[2], n)
    return peers.Peer(name, cmd, {}, ports[0], ports[1], "mlp", ROOT)


SUPERVISORS: dict[str, tuple[int, int]] = {}
"""Our replicated servers: name -> (supervisor port, replicas), to wait for every replica."""


def wait_replicas(name: str, timeout: float) -> None:
    """Until every replica is in the balancer: one joining mid-measurement reloads nginx."""
    import httpx

    port, n = SUPERVISORS[name]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/replicas", timeout=2).json()["ready"] >= n:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{name}: not {n} replicas ready in {timeout}s")


def measure(
    peer: peers.Peer, x: np.ndarray, ref: np.ndarray, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    log = work / f"{peer.name}.log"
    env = {**os.environ, **peer.env}
    proc = start_server(peer.cmd, log, peer.cwd, env)
    token = TOKEN if peer.name.startswith("ours") else None
    result: dict[str, Any] = {}
    try:
        wait_ready(peer.http_port, peer.model_name, proc, args.start_timeout, log)
        if peer.name in SUPERVISORS:
            wait_replicas(peer.name, args.start_timeout)
        request = loadgen.rest_request(peer.http_port, peer.model_name, x, token)
        status, body = asyncio.run(loadgen.rest_once(peer.http_port, request))
        got = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(ref.shape)
        assert status == 200 and np.allclose(got, ref, atol=loadgen.ATOL), (
            f"{peer.name}: wrong REST answer {body[:200]!r}"
        )
        for proto in args.protocols:
            if proto == "grpc":
                try:
                    got = asyncio.run(loadgen.grpc_once(peer.grpc_port, peer.model_name, x, token))
                    assert np.allclose(got, ref, atol=loadgen.ATOL), f"{peer.name}: wrong gRPC answer"
                except Exception as err:  # a peer without working gRPC: say so in the table
                    result["grpc_error"] = repr(err)[:200]
                    continue
            for c in args.concurrency:
                if proto == "grpc":
                    result[f"grpc_c{c}"] = grpc_point(
                        peer.name, peer.grpc_port, peer.model_name, x, token, ref, c, args, proc.pid
                    )
                    continue
                cpu = session_cpu(proc.pid)
                r = loadgen.run_rest_processes(
                    peer.http_port, request, c, args.seconds, args.warmup, min(c, args.client_processes)
                )
                result[f"{proto}_c{c}"] = point(
                    peer.name, proto, c, r, cpu_per_request(proc.pid, cpu, r, args)
                )
    finally:
        stop_group(proc)
    return result


def session_cpu(session: int, command: str | None = None) -> float:
    """CPU seconds (user + system) used so far by the live processes of one session; with
    ``command``, only by those whose command line contains it (``nginx``: our balancer's share).

    Every server starts in its own session, so this covers all its processes and threads (the
    Triton binary and its Python backend stubs, for PyTriton).
    """
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            if command is not None:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if command.encode() not in f.read():
                        continue
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def cpu_per_request(
    session: int, before: float, r: loadgen.Result, args: argparse.Namespace, command: str | None = None
) -> float:
    """Server CPU microseconds per measured request: the point's CPU, scaled to its measured part
    (``command``: of the processes whose command line contains it, as ``session_cpu``)."""
    used = (session_cpu(session, command) - before) * args.seconds / (args.seconds + args.warmup)
    return used / r.requests * 1e6 if r.requests else float("nan")


def point(
    name: str, proto: str, c: int, r: loadgen.Result, cpu_us: float, checked: str = ""
) -> dict[str, Any]:
    print(
        f"  {name:12s} {proto:4s} c={c:<3d} {r.rps:8.0f} req/s  p50 {r.pct(50):.3f} ms  "
        f"p99 {r.pct(99):.3f} ms  server CPU {cpu_us:.0f} us/req  errors {r.errors}{checked}",
        flush=True,
    )
    return {
        "rps": r.rps,
        "p50_ms": r.pct(50),
        "p99_ms": r.pct(99),
        "cpu_us": cpu_us,
        "errors": r.errors,
        "requests": r.requests,
    }


def grpc_point(
    name: str,
    port: int,
    model: str,
    x: np.ndarray,
    token: str | None,
    ref: np.ndarray,
    c: int,
    args: argparse.Namespace,
    session: int,
) -> dict[str, Any]:
    """One gRPC load point, then a grpc.aio pass that checks real answers (errors cannot hide)."""
    if args.grpc_client == "python":
        cpu = session_cpu(session)
        r = asyncio.run(loadgen.run_grpc(port, model, x, token, c, args.seconds, args.warmup))
        return point(name, "grpc", c, r, cpu_per_request(session, cpu, r, args))
    bad, size = asyncio.run(loadgen.grpc_check(port, model, x, token, ref, 8, 1))
    if bad or not size:
        raise RuntimeError(f"{name}: gRPC answers wrong before the load point ({bad} of 8)")
    cpu = session_cpu(session)
    r = loadgen.run_h2load(
        port,
        model,
        x,
        token,
        c,
        args.seconds,
        args.warmup,
        args.grpc_connections,
        size,
        threads=args.grpc_threads,
    )
    cpu_us = cpu_per_request(session, cpu, r, args)
    bad, _ = asyncio.run(loadgen.grpc_check(port, model, x, token, ref, args.check_calls, min(c, 8)))
    r.errors += bad
    res = point(
        name,
        "grpc",
        c,
        r,
        cpu_us,
        f"  (grpc.aio check after: {args.check_calls - bad}/{args.check_calls} OK)",
    )
    res["check_errors"] = bad
    return res


def grpc_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """Requests/s of a canned-response grpcio server: the transport's own limit here."""
    port = free_ports(1)[0]
    proc = start_server([sys.executable, str(HERE / "grpc_ceiling.py"), str(port)], None)
    result: dict[str, Any] = {}
    try:
        x = np.zeros((1, N_IN), np.float32)
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(loadgen.grpc_once(port, "mlp", x, None))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        canned = np.array([[0.5, 0.5]], np.float32)
        for c in args.concurrency:
            result[f"grpc_c{c}"] = grpc_point("grpc-ceiling", port, "mlp", x, None, canned, c, args, proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    return result


def _cell(points: dict[int, dict[str, float]], c: int, key: str, digits: int) -> str:
    """One figure of the table, "-" where its concurrency was not measured."""
    return f"{points[c][key]:.{digits}f}" if c in points else "-"


def table(results: dict[str, Any], floor: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        f"ONNX Runtime in-process (floor): p50 {floor['p50_ms']:.4f} ms, p99 {floor['p99_ms']:.4f} ms, "
        f"{floor['rps_1']:.0f} req/s on one core, {floor.get('rps_cores', float('nan')):.0f} on {args.cores}",
        "",
    ]
    for proto in args.protocols:
        lines += [
            f"### {proto.upper()}",
            "",
            "| server | p50 c=1 (ms) | p99 c=1 (ms) | req/s c=8 | req/s c=32 | server CPU us/req c=32 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, res in results.items():
            if name == "grpc-ceiling" and proto != "grpc":
                continue
            # a concurrency left out of --concurrency reads "-" in its column (_cell)
            points = {k: res[f"{proto}_c{k}"] for k in (1, 8, 32) if f"{proto}_c{k}" in res}
            if "error" in res or not points:
                why = res.get("error") or res.get("grpc_error") or "not measured"
                lines.append(f"| {name} | {why} | | | | |")
                continue
            lines.append(
                f"| {name} | {_cell(points, 1, 'p50_ms', 3)} | {_cell(points, 1, 'p99_ms', 3)} "
                f"| {_cell(points, 8, 'rps', 0)} | {_cell(points, 32, 'rps', 0)} "
                f"| {_cell(points, 32, 'cpu_us', 0)} |"
            )
        ours_res = results.get("ours", {})
        for name, res in results.items():
            if name in ("ours", "grpc-ceiling"):
                continue
            parts = []
            ratios = [
                f"c={k}: {ours_res[key]['rps'] / res[key]['rps']:.1f}x"
                for k in (8, 32)
                if (key := f"{proto}_c{k}") in res and key in ours_res
            ]
            if ratios:
                parts.append(f"throughput {', '.join(ratios)}")
            key = f"{proto}_c1"
            if key in res and key in ours_res:
                parts.append(f"p50 at c=1 {res[key]['p50_ms'] / ours_res[key]['p50_ms']:.1f}x lower")
            if parts:
                lines.append(f"\nours vs {name} ({proto}): {'; '.join(parts)}")
        lines.append("")
    return "\n".join(lines)


def parse_cpus(spec: str) -> set[int] | None:
    """A taskset list (``0-7`` or ``0,2,4-5``) as a set of core numbers; None when empty."""
    if not spec:
        return None
    cores: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def floor_of(model: Path, x: np.ndarray, args: argparse.Namespace, cpus: set[int] | None) -> dict[str, Any]:
    """ONNX Runtime alone: one session's latency, and requests/s on ``--cores`` and on as many
    cores as each replica count (the figure N replicas are held to), on the servers' cores."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # the one-core floor too; restored below for the clients
    try:
        floor: dict[str, Any] = ort_floor(model, x, min(args.seconds, 2.0))
        counts = sorted({int(r.rstrip("b")) for r in args.replicas} | {args.cores})
        floor["rps_n"] = {
            n: round(ort_floor_cores(model, x, min(args.seconds, 3.0), n, cpus)) for n in counts
        }
        floor["rps_cores"] = floor["rps_n"][args.cores]
        if args.provider == "cuda":
            cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
            floor["cuda_1"] = ort_floor(model, x, min(args.seconds, 2.0), cuda)
            batch = np.repeat(x, 32, axis=0)
            floor["cuda_32_rows"] = ort_floor(model, batch, min(args.seconds, 2.0), cuda)["rps_1"] * 32
    finally:
        if cpus:
            os.sched_setaffinity(0, ORIGINAL_CPUS)
    return floor


ORIGINAL_CPUS = os.sched_getaffinity(0)


def scaling_table(results: dict[str, Any], floor: dict[str, Any], args: argparse.Namespace) -> str:
    """Replicas against throughput: the best concurrency of each replica count, its speed-up over
    one replica, and its share of ONNX Runtime alone on as many cores (``1b``: one replica behind
    the balancer, what the balancer costs)."""
    ours_runs = {
        name.removeprefix("ours x") if name != "ours" else "1": res
        for name, res in results.items()
        if name.startswith("ours") and "error" not in res
    }
    if not ours_runs:
        return ""
    lines = [f"### Scaling ({args.provider}; cores {args.server_cpus or 'all'})", ""]
    lines += [
        "| replicas | protocol | req/s (best c) | x one replica | ONNX Runtime alone on N cores | share |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for proto in args.protocols:
        base = None
        for label, res in sorted(ours_runs.items(), key=lambda kv: (int(kv[0].rstrip("b")), kv[0])):
            n = int(label.rstrip("b"))
            points = {int(k.split("_c")[1]): v for k, v in res.items() if k.startswith(f"{proto}_c")}
            if not points:
                continue
            c, best = max(points.items(), key=lambda kv: kv[1]["rps"])
            base = base or best["rps"]
            alone = floor["rps_n"].get(n)
            share = f"{best['rps'] / alone * 100:.0f} %" if alone else "-"
            speedup = best["rps"] / base
            rps = f"{best['rps']:.0f} (c={c})"
            lines.append(f"| {label} | {proto} | {rps} | {speedup:.2f} | {alone or '-'} | {share} |")
    return "\n".join(lines) + "\n"


def start_server(
    cmd: list[str], log: Path | None, cwd: Path | str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A server under test in a process group of its own (``stop_group`` ends it with all it
    started: replicas, nginx), its output to ``log`` (None: this script's own)."""
    if log is None:
        return subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server's process group, SIGKILL it when it has not exited within 15 s."""
    try:
        os.killpg(proc.pid, 15)
        proc.wait(15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, 9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="mlserver,kserve,pytriton", help="comma list, or 'none'")
    ap.add_argument("--protocols", default="rest,grpc")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument(
        "--grpc-client",
        choices=("h2load", "python"),
        default="h2load",
        help="gRPC load generator: h2load (C, from nghttp2-client) or grpc.aio (slower than the servers)",
    )
    ap.add_argument(
        "--grpc-connections",
        type=int,
        default=1,
        help="HTTP/2 connections h2load spreads the c streams over (1: one channel, as a gRPC client)",
    )
    ap.add_argument(
        "--check-calls", type=int, default=64, help="grpc.aio calls checked after each gRPC point"
    )
    ap.add_argument("--models", default="mlp,cnn", help="mlp (30 features), cnn ([N,3,64,64]), or both")
    ap.add_argument(
        "--replicas",
        default="1,2",
        help="our replica counts: 1 (the server alone), N (N behind the balancer), 1b (one behind it)",
    )
    ap.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="processes of the ONNX Runtime floor"
    )
    ap.add_argument(
        "--provider",
        choices=PROVIDER_NAMES,
        default="cpu",
        help="our server's --execution-provider (cuda: onnxruntime-gpu and a GPU; the floor runs there too)",
    )
    ap.add_argument(
        "--server-cpus",
        default="",
        help="cores (taskset list, e.g. 0-7) for our servers and the floor; run the script itself "
        "under taskset on the other cores so that the load clients do not share them",
    )
    ap.add_argument("--client-processes", type=int, default=1, help="REST load client processes")
    ap.add_argument("--grpc-threads", type=int, default=1, help="h2load threads (at most one per connection)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the canned gRPC server")
    ap.add_argument("--setup-only", action="store_true")
    args = ap.parse_args()
    args.protocols = [p for p in args.protocols.split(",") if p]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.models = [m for m in args.models.split(",") if m]
    if set(args.models) - set(MODELS):
        ap.error(f"--models {','.join(args.models)}: use {', '.join(MODELS)}")
    args.replicas = [r for r in args.replicas.split(",") if r]
    names = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    results_dir = ROOT / "benchmarks" / "results"
    work = results_dir / f"serving-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"installing {name} into benchmarks/.venvs/{name} (once) ...", flush=True)
        peers.ensure_venv(name, work / f"install-{name}.log")
    if args.setup_only:
        return
    import onnxruntime as ort

    cpus = parse_cpus(args.server_cpus)
    if args.provider == "cuda":
        loadgen.ATOL = 5e-3
    everything: dict[str, Any] = {}
    for model_name in args.models:
        folder = work / model_name
        model, x = build_named(model_name, folder)
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        floor = floor_of(model, x, args, cpus)
        print(
            f"{model_name}: onnxruntime floor p50 {floor['p50_ms'] * 1e3:.1f} us, "
            f"{floor['rps_1']:.0f} req/s on 1 core, {floor['rps_cores']:.0f} on {args.cores}; "
            f"on N cores: {floor['rps_n']}"
            + (
                f"; CUDA: {floor['cuda_1']['rps_1']:.0f} req/s one at a time (p50 "
                f"{floor['cuda_1']['p50_ms'] * 1e3:.0f} us), "
                f"{floor['cuda_32_rows']:.0f} rows/s in batches of 32"
                if "cuda_1" in floor
                else ""
            ),
            flush=True,
        )
        results: dict[str, Any] = {}
        if "grpc" in args.protocols and model_name == "mlp" and args.ceiling:
            results["grpc-ceiling"] = grpc_ceiling(args)
        candidates = [("ours", r) for r in args.replicas] + [(n, "") for n in names]
        for label, replicas in candidates:
            if label == "ours":
                peer = ours(folder, model.parent, replicas, args.provider, args.server_cpus)
            else:
                peer = peers.BUILDERS[label](folder, model, free_ports(3))
            print(f"measuring {peer.name} on {model_name} ...", flush=True)
            try:
                results[peer.name] = measure(peer, x, ref, args, folder)
            except Exception as err:
                print(f"  {label} failed: {err}", flush=True)
                results[peer.name] = {"error": str(err).splitlines()[0][:120] if str(err) else repr(err)}
        everything[model_name] = {"floor": floor, "results": results}
        (work / "results.json").write_text(json.dumps({"models": everything, "args": vars(args)}, indent=1))
    print()
    for model_name, got in everything.items():
        print(f"## {model_name}\n")
        print(table(got["results"], got["floor"], args))
        print(scaling_table(got["results"], got["floor"], args))


if __name__ == "__main__":
    main()

"""What the model server costs per request on top of ONNX Runtime, per model and wire encoding.

On a shared 2-core machine the load clients compete with the server for the cores, so requests/s
says little about the server itself. This script reports the server's own CPU time per request
(user + system of every process of its session, over a closed-loop load of ``--concurrency``
requests in flight) next to ONNX Runtime's own time per row in-process (the floor, same session
options: 1 intra-op, 1 inter-op thread). ``floor share`` = floor / server CPU: the fraction of
ONNX Runtime's in-process throughput a core running the server reaches (the aim on the
compute-bound CNN: at least 90 %).

Next to it, ONNX Runtime's own time inside the server (the statistics extension's
``compute_infer``, each batch once; wall time around the call, so a core taken away by the load
clients counts in it) splits the server's CPU into the model's share and the front
end's (HTTP or gRPC, decoding, metrics, the event loop and the socket calls). ``ceiling`` = floor /
in-server ONNX Runtime time: the floor share a front end costing nothing would reach. It falls
below 100 % where the model runs colder in the server than in a tight loop (a fresh input buffer
each request, the caches shared with the front end): 78-108 % on the CNN; the batched MLP goes
above 100 %, a batch costing less a row than the floor's single-row calls (benchmarks/README.md).

``--rows N`` sends N rows (images) in each request, and the floor runs ONNX Runtime on the same N
rows a call; every figure is then per row. The front end's cost is per request, so it shrinks by N
per row: what a client that sends its images in batches (``perf_analyzer -b N``) gets.

Encodings: REST with a JSON ``data`` list, REST with the binary tensor extension
(``Inference-Header-Content-Length``, what tritonclient and perf_analyzer send), gRPC with typed
``contents.fp32_contents``, gRPC with ``raw_input_contents``, and both protocols with the input
in a POSIX shared-memory region registered once (Triton's system shared-memory extension, what
``perf_analyzer --shared-memory system`` does; the server then runs with ``--allow-client-shm``).
Every encoding's first answer is checked against ONNX Runtime before it is measured.

    .venv/bin/python benchmarks/serving/request_cost.py                    # both models, 3 s a point
    .venv/bin/python benchmarks/serving/request_cost.py --models cnn --seconds 5
    .venv/bin/python benchmarks/serving/request_cost.py --models cnn --rows 8  # 8 images a request
    .venv/bin/python benchmarks/serving/request_cost.py --server-root /tmp/old  # another checkout's server
    .venv/bin/python benchmarks/serving/request_cost.py --balancer --encodings grpc-raw,rest-binary

``--server-root`` runs the server from another source tree (e.g. ``git archive REV appliance |
tar -x -C /tmp/old``), to measure before and after a change in one run of this script.

``--balancer`` runs the server as the stack does with ``serving.max_replicas`` above 1: one
replica behind the supervisor's nginx, the load sent to nginx. The server's figures are then the
replica's (and the supervisor's, which does no per-request work), and nginx's CPU per request is
a column of its own: the balancer's hop, split into what it costs nginx and what it costs the
replica (nginx opens an upstream connection for every request in flight and sends each gRPC
call's head in its own way, so a replica behind it does not work as it does for a client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from bench_model import build_named, ort_floor  # noqa: E402

ENCODINGS = ("rest-json", "rest-binary", "grpc-typed", "grpc-raw", "rest-shm", "grpc-shm")
SHM_REGION = "input"


def _shm(encoding: str) -> str | None:
    return SHM_REGION if encoding.endswith("-shm") else None


def register_input(http_port: int, x: np.ndarray) -> Path:
    """The input in a POSIX shared-memory object of this user (mode 0600, as tritonclient makes
    them), registered with the server as SHM_REGION; returns the object's path (the caller
    removes it)."""
    key = f"appliance-bench-{os.getpid()}"
    path = Path("/dev/shm") / key
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(np.ascontiguousarray(x, "<f4").tobytes())
    reply = httpx.post(
        f"http://127.0.0.1:{http_port}/v2/systemsharedmemory/region/{SHM_REGION}/register",
        json={"key": f"/{key}", "offset": 0, "byte_size": x.nbytes},
        headers={"Authorization": f"Bearer {run.TOKEN}"},
        timeout=10,
    )
    if reply.status_code != 200:
        path.unlink()
        raise RuntimeError(f"registering the shared-memory input failed: {reply.status_code} {reply.text}")
    return path


def _check(port: tuple[int, int], encoding: str, x: np.ndarray, ref: np.ndarray) -> int:
    """The first answer of an encoding, checked; returns a gRPC answer's frame size (0 for REST)."""
    http, grpc_port = port
    if encoding.startswith("rest"):
        request = loadgen.rest_request(
            http, "mlp", x, run.TOKEN, binary=encoding == "rest-binary", shm=_shm(encoding)
        )
        status, body = asyncio.run(loadgen.rest_once(http, request))
        got = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(ref.shape)
        if status != 200 or not np.allclose(got, ref, atol=1e-5):
            raise RuntimeError(f"{encoding}: wrong answer {body[:200]!r}")
        return 0
    raw = encoding == "grpc-raw"
    bad, size = asyncio.run(
        loadgen.grpc_check(grpc_port, "mlp", x, run.TOKEN, ref, 8, 1, raw, _shm(encoding))
    )
    if bad or not size:
        raise RuntimeError(f"{encoding}: {bad} of 8 answers wrong")
    return size


def compute_infer(http_port: int) -> tuple[int, int]:
    """(requests answered, nanoseconds in ONNX Runtime) in the server so far, from the statistics
    extension: each batch's time once (``batch_stats``; a request's own ``compute_infer`` is the
    whole time of the batch it ran in, which counts a batch once per request)."""
    reply = httpx.get(
        f"http://127.0.0.1:{http_port}/v2/models/mlp/stats",
        headers={"Authorization": f"Bearer {run.TOKEN}"},
        timeout=10,
    )
    reply.raise_for_status()
    (stats,) = reply.json()["model_stats"]
    ns = sum(int(b["compute_infer"]["ns"]) for b in stats["batch_stats"])
    return int(stats["inference_stats"]["success"]["count"]), ns


def measure(
    peer: Any, x: np.ndarray, ref: np.ndarray, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One load point per encoding, each on a server of its own: what one encoding's requests
    cost must not depend on what an earlier encoding left in the process (glibc's malloc, for
    one, keeps larger buffers once a larger one has been freed: serving/allocator.py)."""
    result: dict[str, Any] = {}
    env = {**os.environ, "PYTHONPATH": str(args.server_root)}
    for encoding in args.encodings:
        log = work / f"server-{encoding}.log"
        cmd = [*peer.cmd, "--allow-client-shm"] if _shm(encoding) else peer.cmd
        proc = run.start_server(cmd, log, args.server_root, env)
        try:
            run.wait_ready(peer.http_port, "mlp", proc, args.start_timeout, log)
            if args.balancer:
                run.wait_replicas(peer.name, args.start_timeout)
            shm = register_input(peer.http_port, x) if _shm(encoding) else None
            try:
                result[encoding] = _point(peer, proc, encoding, x, ref, args)
            finally:
                if shm is not None:
                    shm.unlink()
        finally:
            run.stop_group(proc)
    return result


def _point(
    peer: Any, proc: subprocess.Popen[bytes], encoding: str, x: np.ndarray, ref: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    size = _check((peer.http_port, peer.grpc_port), encoding, x, ref)
    before, before_nginx = run.session_cpu(proc.pid), run.session_cpu(proc.pid, "nginx")
    count0, ns0 = compute_infer(peer.http_port)
    if encoding.startswith("rest"):
        request = loadgen.rest_request(
            peer.http_port, "mlp", x, run.TOKEN, binary=encoding == "rest-binary", shm=_shm(encoding)
        )
        load = loadgen.run_rest(peer.http_port, request, args.concurrency, args.seconds, args.warmup)
        r = asyncio.run(load)
    else:
        r = loadgen.run_h2load(
            peer.grpc_port, "mlp", x, run.TOKEN, args.concurrency, args.seconds, args.warmup,
            1, size, raw=encoding == "grpc-raw", shm=_shm(encoding),
        )  # fmt: skip
    nginx_us = run.cpu_per_request(proc.pid, before_nginx, r, args, "nginx")
    cpu_us = run.cpu_per_request(proc.pid, before, r, args) - nginx_us
    count1, ns1 = compute_infer(peer.http_port)
    ort_us = (ns1 - ns0) / 1e3 / max(1, count1 - count0)
    print(
        f"  {encoding:11s} {r.rps:8.0f} req/s  server CPU {cpu_us:7.0f} us/req  "
        f"ORT in the server {ort_us:5.0f} us/req  "
        + (f"balancer CPU {nginx_us:5.0f} us/req  " if args.balancer else "")
        + f"errors {r.errors}",
        flush=True,
    )
    return {
        "rps": r.rps,
        "cpu_us": cpu_us,
        "ort_us": ort_us,
        "balancer_us": nginx_us,
        "errors": r.errors,
        "requests": r.requests,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--encodings", default=",".join(ENCODINGS))
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--rows", type=int, default=1, help="rows (images) in each request")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--server-root", type=Path, default=run.ROOT, help="source tree the server runs from")
    ap.add_argument(
        "--balancer",
        action="store_true",
        help="the server as one replica behind the supervisor's nginx balancer (its CPU apart)",
    )
    args = ap.parse_args()
    args.encodings = [e for e in args.encodings.split(",") if e]
    if not 1 <= args.rows <= 32:
        ap.error(f"--rows {args.rows}: use 1 to 32 (the server's max_batch_size)")
    unknown = set(args.encodings) - set(ENCODINGS)
    if unknown:
        ap.error(f"unknown encodings {sorted(unknown)}: use {', '.join(ENCODINGS)}")
    if not (args.server_root / "appliance" / "workloads" / "serving").is_dir():
        ap.error(f"--server-root {args.server_root} holds no appliance/workloads/serving")
    import onnxruntime as ort

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in [m for m in args.models.split(",") if m]:
            folder = Path(tmp) / model_name
            try:
                model, x = build_named(model_name, folder, args.rows)
            except ValueError as err:
                ap.error(str(err))
            ref = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
            floor_us = 1e6 / ort_floor(model, x, 2.0)["rps_1"] / args.rows
            print(f"{model_name}: onnxruntime alone {floor_us:.0f} us a row, {args.rows} a call", flush=True)
            peer = run.ours(folder, model.parent, "1b" if args.balancer else "1")  # on the CPU, as the floor
            for encoding, got in measure(peer, x, ref, args, folder).items():
                rows.append((model_name, encoding, got, floor_us))
    head = (
        f"rows/req | req/s (c={args.concurrency}) | server CPU us/row | of it ORT (wall) / front end "
        "| ORT alone us/row | floor share | ceiling" + (" | balancer CPU us/row" if args.balancer else "")
    )
    print(f"\n| model | encoding | {head} |")
    print("| --- " * (10 if args.balancer else 9) + "|")
    n = args.rows
    for model_name, encoding, got, floor_us in rows:
        cpu, ort_us = got["cpu_us"] / n, got["ort_us"] / n
        print(
            f"| {model_name} | {encoding} | {n} | {got['rps']:.0f} | {cpu:.0f} "
            f"| {ort_us:.0f} / {cpu - ort_us:.0f} | {floor_us:.0f} "
            f"| {100 * floor_us / cpu:.0f} % | {100 * floor_us / ort_us:.0f} %"
            + (f" | {got['balancer_us'] / n:.0f} |" if args.balancer else " |")
        )


if __name__ == "__main__":
    main()

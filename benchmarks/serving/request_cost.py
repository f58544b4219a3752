"""What the model server costs per request on top of ONNX Runtime, per model and wire encoding.

On a shared 2-core machine the load clients compete with the server for the cores, so requests/s
says little about the server itself. This script reports the server's own CPU time per request
(user + system of every process of its session, over a closed-loop load of ``--concurrency``
requests in flight) next to ONNX Runtime's own time per row in-process (the floor, same session
options: 1 intra-op, 1 inter-op thread). ``floor share`` = floor / server CPU: the fraction of
ONNX Runtime's in-process throughput a core running the server reaches (the aim on the
compute-bound CNN: at least 90 %).

Encodings: REST with a JSON ``data`` list, REST with the binary tensor extension
(``Inference-Header-Content-Length``, what tritonclient and perf_analyzer send), gRPC with typed
``contents.fp32_contents``, gRPC with ``raw_input_contents``. Every encoding's first answer is
checked against ONNX Runtime before it is measured.

    .venv/bin/python benchmarks/serving/request_cost.py                    # both models, 3 s a point
    .venv/bin/python benchmarks/serving/request_cost.py --models cnn --seconds 5
    .venv/bin/python benchmarks/serving/request_cost.py --server-root /tmp/old  # another checkout's server

``--server-root`` runs the server from another source tree (e.g. ``git archive REV appliance |
tar -x -C /tmp/old``), to measure before and after a change in one run of this script.
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from bench_model import CNN_SHAPE, N_IN, build_cnn, build_model, ort_floor  # noqa: E402

ENCODINGS = ("rest-json", "rest-binary", "grpc-typed", "grpc-raw")


def _check(port: tuple[int, int], encoding: str, x: np.ndarray, ref: np.ndarray) -> int:
    """The first answer of an encoding, checked; returns a gRPC answer's frame size (0 for REST)."""
    http, grpc_port = port
    if encoding.startswith("rest"):
        request = loadgen.rest_request(http, "mlp", x, run.TOKEN, binary=encoding == "rest-binary")
        status, body = asyncio.run(loadgen.rest_once(http, request))
        got = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(ref.shape)
        if status != 200 or not np.allclose(got, ref, atol=1e-5):
            raise RuntimeError(f"{encoding}: wrong answer {body[:200]!r}")
        return 0
    raw = encoding == "grpc-raw"
    bad, size = asyncio.run(loadgen.grpc_check(grpc_port, "mlp", x, run.TOKEN, ref, 8, 1, raw))
    if bad or not size:
        raise RuntimeError(f"{encoding}: {bad} of 8 answers wrong")
    return size


def measure(
    peer: Any, x: np.ndarray, ref: np.ndarray, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Start the server, then one load point per encoding; the server's CPU per request each."""
    log = work / "server.log"
    env = {**os.environ, "PYTHONPATH": str(args.server_root)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            peer.cmd,
            cwd=args.server_root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    result: dict[str, Any] = {}
    try:
        run.wait_ready(peer.http_port, "mlp", proc, args.start_timeout, log)
        for encoding in args.encodings:
            size = _check((peer.http_port, peer.grpc_port), encoding, x, ref)
            before = run.session_cpu(proc.pid)
            if encoding.startswith("rest"):
                request = loadgen.rest_request(
                    peer.http_port, "mlp", x, run.TOKEN, binary=encoding == "rest-binary"
                )
                r = asyncio.run(
                    loadgen.run_rest(peer.http_port, request, args.concurrency, args.seconds, args.warmup)
                )
            else:
                r = loadgen.run_h2load(
                    peer.grpc_port, "mlp", x, run.TOKEN, args.concurrency, args.seconds, args.warmup,
                    1, size, raw=encoding == "grpc-raw",
                )  # fmt: skip
            cpu_us = run.cpu_per_request(proc.pid, before, r, args)
            result[encoding] = {"rps": r.rps, "cpu_us": cpu_us, "errors": r.errors, "requests": r.requests}
            print(
                f"  {encoding:11s} {r.rps:8.0f} req/s  server CPU {cpu_us:7.0f} us/req  errors {r.errors}",
                flush=True,
            )
    finally:
        run.stop_group(proc)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--encodings", default=",".join(ENCODINGS))
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--server-root", type=Path, default=run.ROOT, help="source tree the server runs from")
    args = ap.parse_args()
    args.encodings = [e for e in args.encodings.split(",") if e]
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
            if model_name == "mlp":
                model = build_model(folder)
                x = np.random.default_rng(1).normal(size=(1, N_IN)).astype(np.float32)
            elif model_name == "cnn":
                model = build_cnn(folder)
                x = np.random.default_rng(1).normal(size=(1, *CNN_SHAPE)).astype(np.float32)
            else:
                ap.error(f"unknown model {model_name!r}: use mlp, cnn")
            ref = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
            floor_us = 1e6 / ort_floor(model, x, 2.0)["rps_1"]
            print(f"{model_name}: onnxruntime alone {floor_us:.0f} us per row", flush=True)
            peer = run.ours(folder, model.parent, args)
            for encoding, got in measure(peer, x, ref, args, folder).items():
                rows.append((model_name, encoding, got, floor_us))
    head = f"req/s (c={args.concurrency}) | server CPU us/req | ORT us/row | floor share"
    print(f"\n| model | encoding | {head} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model_name, encoding, got, floor_us in rows:
        print(
            f"| {model_name} | {encoding} | {got['rps']:.0f} | {got['cpu_us']:.0f} | {floor_us:.0f} "
            f"| {100 * floor_us / got['cpu_us']:.0f} % |"
        )


if __name__ == "__main__":
    main()

"""Closed-loop load client: N concurrent in-flight requests, latency per request.

REST uses a minimal asyncio HTTP/1.1 keep-alive client (one connection per concurrent stream),
so the client costs the same few microseconds whichever server it measures. gRPC goes through
h2load (nghttp2's C HTTP/2 load generator) by default: it POSTs the length-prefixed serialized
ModelInferRequest to /inference.GRPCInferenceService/ModelInfer over h2c with N streams in
flight, at a fraction of the CPU a Python gRPC client spends per call (a grpc.aio client capped
every server here, even one returning a canned answer, near 1100-1400 req/s). h2load does not
read grpc-status trailers, so a failed call is caught two ways: an error answer carries no
message (the DATA bytes fall short of requests x answer size), and a grpc.aio pass checks real
answers after every point. The grpc.aio client (the stub generated from the upstream protocol,
tritonclient's; one channel, N tasks) stays available as ``run_grpc``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ATOL = 1e-5
"""How far an answer may be from the CPU reference; run.py widens it for CUDA, whose convolutions
run in TF32 by default."""


@dataclass
class Result:
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if len(self.latencies) else float("nan")


def rest_request(
    port: int, model: str, x: np.ndarray, token: str | None, binary: bool = False, shm: str | None = None
) -> bytes:
    """The benchmark's REST infer request: the input as a JSON ``data`` list, or with ``binary``
    as raw bytes after the JSON header (the binary tensor extension, what tritonclient and
    perf_analyzer send), or with ``shm`` the name of a registered shared-memory region holding
    it (Triton's system shared-memory extension). The answer is JSON either way."""
    tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    if shm:
        tensor["parameters"] = {"shared_memory_region": shm, "shared_memory_byte_size": x.nbytes}
    elif binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
    else:
        tensor["data"] = x.ravel().tolist()
    body = json.dumps({"inputs": [tensor]}).encode()
    extra = b""
    if binary:
        extra = b"Inference-Header-Content-Length: %d\r\n" % len(body)
        body += np.ascontiguousarray(x, "<f4").tobytes()
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    kind = b"application/octet-stream" if binary else b"application/json"
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + auth
        + extra
        + b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (kind, len(body))
        + body
    )


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        if i < 0:
            raise RuntimeError("response without Content-Length")
        length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
        total = end + 4 + length
        if len(self.buf) >= total:
            status = int(self.buf[9:12])
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))


async def rest_once(port: int, request: bytes) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()
    _t, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
    conn.waiter = loop.create_future()
    assert conn.transport is not None
    conn.transport.write(request)
    out = await conn.waiter
    conn.transport.close()
    return out


async def run_rest(port: int, request: bytes, concurrency: int, seconds: float, warmup: float) -> Result:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(concurrency):
        _t, c = await loop.create_connection(_Conn, "127.0.0.1", port)
        conns.append(c)
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def stream(c: _Conn) -> None:
        nonlocal errors
        assert c.transport is not None
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            c.waiter = loop.create_future()
            c.transport.write(request)
            status, _ = await c.waiter
            t1 = time.perf_counter()
            if t0 >= measure_from:
                lat.append(t1 - t0)
                if status != 200:
                    errors += 1

    await asyncio.gather(*(stream(c) for c in conns))
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return Result(len(lat), errors, seconds, np.array(lat))


def _rest_worker(
    port: int, request: bytes, concurrency: int, seconds: float, warmup: float, start_at: float, out: Any
) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    r = asyncio.run(run_rest(port, request, concurrency, seconds, warmup))
    out.put((r.requests, r.errors, r.latencies))


def run_rest_processes(
    port: int, request: bytes, concurrency: int, seconds: float, warmup: float, processes: int
) -> Result:
    """``run_rest`` split over ``processes`` client processes started together: one Python
    client tops out near 40 K requests/s, below what several replicas answer on a big machine."""
    import multiprocessing as mp

    processes = min(processes, concurrency)
    if processes <= 1:
        return asyncio.run(run_rest(port, request, concurrency, seconds, warmup))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 1.5  # every process spawned and connected before the clock starts
    procs = [
        ctx.Process(
            target=_rest_worker,
            args=(port, request, share, seconds, warmup, start_at, queue),
        )
        for share in shares
    ]
    for p in procs:
        p.start()
    parts = [queue.get(timeout=seconds + warmup + 120) for _ in procs]
    for p in procs:
        p.join()
    return Result(
        sum(n for n, _, _ in parts),
        sum(e for _, e, _ in parts),
        seconds,
        np.concatenate([lat for _, _, lat in parts]),
    )


async def run_grpc(
    port: int, model: str, x: np.ndarray, token: str | None, concurrency: int, seconds: float, warmup: float
) -> Result:
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    req = grpc_request(model, x)
    meta = (("authorization", f"Bearer {token}"),) if token else None
    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(req, metadata=meta)
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def stream() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await stub.ModelInfer(req, metadata=meta)
                except grpc.aio.AioRpcError:
                    errors += 1
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    lat.append(t1 - t0)

        await asyncio.gather(*(stream() for _ in range(concurrency)))
    return Result(len(lat), errors, seconds, np.array(lat))


async def grpc_once(port: int, model: str, x: np.ndarray, token: str | None, raw: bool = False) -> np.ndarray:
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    req = grpc_request(model, x, raw)
    meta = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, metadata=meta)
    out = resp.outputs[0]
    if resp.raw_output_contents:
        return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(out.shape))
    return np.array(out.contents.fp32_contents, np.float32).reshape(list(out.shape))


def grpc_request(model: str, x: np.ndarray, raw: bool = False, shm: str | None = None) -> Any:
    """The benchmark's ModelInferRequest: one FP32 input in typed contents, or with ``raw`` in
    raw_input_contents (what tritonclient sends), or with ``shm`` in that registered
    shared-memory region (the answer then comes as raw contents)."""
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    if shm:
        t.parameters["shared_memory_region"].string_param = shm
        t.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    elif raw:
        req.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
    else:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    return req


async def grpc_check(
    port: int,
    model: str,
    x: np.ndarray,
    token: str | None,
    ref: np.ndarray,
    n: int,
    concurrency: int,
    raw: bool = False,
    shm: str | None = None,
) -> tuple[int, int]:
    """Send n ModelInfer calls (concurrency in flight) through grpc.aio and check every answer.

    Returns (calls that failed or answered wrong, size of one answer's gRPC message frame).
    """
    import grpc
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    req = grpc_request(model, x, raw, shm)
    meta = (("authorization", f"Bearer {token}"),) if token else None
    bad = 0
    size = 0
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> None:
            nonlocal bad, size
            async with sem:
                try:
                    resp = await stub.ModelInfer(req, metadata=meta)
                except grpc.aio.AioRpcError:
                    bad += 1
                    return
            out = resp.outputs[0]
            if resp.raw_output_contents:
                got = np.frombuffer(resp.raw_output_contents[0], np.float32)
            else:
                got = np.array(out.contents.fp32_contents, np.float32)
            if got.size != ref.size or not np.allclose(got.reshape(ref.shape), ref, atol=ATOL):
                bad += 1
            size = 5 + resp.ByteSize()

        await asyncio.gather(*(one() for _ in range(n)))
    return bad, size


def h2load_path() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise RuntimeError(
            "h2load is not installed: apt-get install nghttp2-client (scripts/bootstrap.sh does), "
            "or pass --grpc-client python"
        )
    return path


def run_h2load(
    port: int,
    model: str,
    x: np.ndarray,
    token: str | None,
    concurrency: int,
    seconds: float,
    warmup: float,
    connections: int,
    answer_size: int,
    raw: bool = False,
    shm: str | None = None,
    threads: int = 1,
) -> Result:
    """Closed loop of ``concurrency`` gRPC ModelInfer calls in flight, driven by h2load.

    The streams are spread over min(connections, concurrency) HTTP/2 connections (as many
    streams on each), driven by min(threads, connections) h2load threads. ``answer_size`` is
    the byte size of one successful answer's message frame (from grpc_check): answers that
    carried fewer DATA bytes count as errors.
    """
    conns = max(1, min(connections, concurrency))
    if concurrency % conns:
        raise ValueError(f"concurrency {concurrency} does not split over {conns} connections")
    body = grpc_request(model, x, raw, shm).SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        frame = Path(tmp) / "request.bin"
        frame.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)
        log = Path(tmp) / "requests.tsv"

        def h2load(duration: float, log_file: Path | None) -> str:
            cmd = [
                h2load_path(),
                "-t",
                str(max(1, min(threads, conns))),
                "-c",
                str(conns),
                "-m",
                str(concurrency // conns),
                "-D",
                f"{max(1, round(duration * 1000))}ms",
                "-d",
                str(frame),
                *(["--log-file", str(log_file)] if log_file else []),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                *(["-H", f"authorization: Bearer {token}"] if token else []),
                f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
            if proc.returncode != 0:
                tail = proc.stderr[-500:] + proc.stdout[-500:]
                raise RuntimeError(f"h2load failed ({proc.returncode}): {tail}")
            return proc.stdout

        # The warm-up is a run of its own: h2load's --warm-up-time counts the warm-up's bytes in
        # its traffic total but not its requests in the log (so the answer-size check below could
        # not see a short answer), and logs a request caught at the boundary with status 0.
        if warmup > 0:
            h2load(warmup, None)
        stdout = h2load(seconds, log)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    lat = np.array([int(r[2]) / 1e6 for r in rows if r[1] == "200"])
    failed = sum(1 for r in rows if r[1] != "200")
    match = re.search(r"\(([0-9]+)\) data", stdout)  # traffic: ... 156.76KB (160524) data
    if match is None:
        raise RuntimeError(f"no traffic line in h2load output: {stdout[-500:]}")
    data = int(match.group(1))
    short = len(lat) * answer_size - data
    errors = failed + (max(0, -(-short // answer_size)) if answer_size else 0)
    return Result(len(rows), errors, seconds, lat)

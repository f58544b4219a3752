"""Closed-loop load client: N concurrent in-flight requests, latency per request.

REST uses a minimal asyncio HTTP/1.1 keep-alive client (one connection per concurrent stream),
so the client costs the same few microseconds whichever server it measures; gRPC uses grpc.aio
with the stub generated from the upstream protocol (tritonclient's), one channel, N tasks.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np


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


def rest_request(port: int, model: str, x: np.ndarray, token: str | None) -> bytes:
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
            ]
        }
    ).encode()
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + auth
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
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


async def run_grpc(
    port: int, model: str, x: np.ndarray, token: str | None, concurrency: int, seconds: float, warmup: float
) -> Result:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
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


async def grpc_once(port: int, model: str, x: np.ndarray, token: str | None) -> np.ndarray:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    meta = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, metadata=meta)
    out = resp.outputs[0]
    if resp.raw_output_contents:
        return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(out.shape))
    return np.array(out.contents.fp32_contents, np.float32).reshape(list(out.shape))

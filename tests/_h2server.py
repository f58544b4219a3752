"""An in-process HTTP/2 gRPC transport for tests that speak raw HTTP/2 to it.

The server runs in-process (its own event loop in a thread) with a small echo servicer and the
limits a test sets, so that a limit can be made small enough to hit in milliseconds and the
server's state (its connections, their decoders) can be read by the test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from appliance.workloads.serving import grpc_h2
from appliance.workloads.serving.errors import Unauthorized
from appliance.workloads.serving.limits import ServerLimits

TOKEN = "good-token"
INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"


class Echo(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer sends the raw inputs back (after ``hold`` is set); counts calls and cancels."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.started = threading.Event()
        self.hold: asyncio.Event | None = None

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.calls += 1
        self.started.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        response = pb.ModelInferResponse(model_name=request.model_name)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response


def authorize(path: str, authorization: str | None) -> None:
    if path != LIVE and authorization != f"Bearer {TOKEN}":
        raise Unauthorized("missing or invalid bearer token")


@dataclass
class Running:
    port: int
    server: grpc_h2.H2GrpcServer
    servicer: Echo
    loop: asyncio.AbstractEventLoop

    def connection(self) -> grpc_h2.H2GrpcProtocol:
        (conn,) = self.server.connections
        return conn


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@contextmanager
def running(loop_kind: str = "asyncio", **limits: Any) -> Iterator[Running]:
    """The transport with an echo servicer on its own event loop in a thread (``asyncio`` or
    ``uvloop``), with ``limits`` set."""
    loop = new_loop(loop_kind)
    servicer = Echo()
    methods = grpc_h2.methods_of(servicer, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb)
    server = grpc_h2.H2GrpcServer(methods, ServerLimits(**limits), authorize, small_calls=(LIVE,))
    port = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Running(port, server, servicer, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def infer_request(size: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.raw_input_contents.append(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return request


def assert_normal_call(port: int) -> None:
    """A new connection, through grpcio's own client: the server still serves."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(infer_request(1000), metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert response.raw_output_contents[0] == infer_request(1000).raw_input_contents[0]

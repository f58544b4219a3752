"""The hand-rolled HTTP/2 gRPC server against grpcio's own client, in one process.

What the model-server tests do not reach: answers and requests larger than the HTTP/2
flow-control windows and frame size, gzip-compressed messages, many calls in flight on one
connection, status codes from abort and from methods the servicer does not implement, limits,
and a graceful stop.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb  # the upstream stub; the integration tests load it too
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from appliance.workloads.serving import grpc_h2
from appliance.workloads.serving.limits import ServerLimits


class Echo(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer sends the raw inputs back; ModelReady aborts; the rest is not implemented."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self.release.wait()
        meta = dict(context.invocation_metadata())
        response = pb.ModelInferResponse(model_name=request.model_name, id=meta.get("x-id", ""))
        response.raw_output_contents.extend(request.raw_input_contents)
        return response

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}' ü%")


MAX_MESSAGE = 8 << 20


def serve(
    test: Callable[[pb_grpc.GRPCInferenceServiceStub, Echo, grpc_h2.H2GrpcServer], Awaitable[None]],
) -> None:
    async def main() -> None:
        servicer = Echo()
        methods = grpc_h2.methods_of(servicer, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb)
        server = grpc_h2.H2GrpcServer(methods, ServerLimits(max_body_bytes=MAX_MESSAGE))
        port = await server.start("127.0.0.1", 0)
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                await test(pb_grpc.GRPCInferenceServiceStub(channel), servicer, server)
        finally:
            await server.stop(1)

    asyncio.run(main())


def infer(size: int, model: str = "m") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.raw_input_contents.append(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return request


def test_small_and_large_messages_both_ways() -> None:
    async def test(stub: Any, _servicer: Echo, _server: Any) -> None:
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        for size in (0, 100, 70_000, 3 << 20):  # past the 64 KiB window and the 16 KiB frame
            request = infer(size)
            response = await stub.ModelInfer(request, metadata=(("x-id", "r1"),))
            assert response.raw_output_contents[0] == request.raw_input_contents[0]
            assert response.id == "r1"

    serve(test)


def test_many_calls_in_flight_on_one_connection() -> None:
    async def test(stub: Any, _servicer: Echo, _server: Any) -> None:
        requests = [infer(i * 997, model=f"m{i}") for i in range(200)]
        responses = await asyncio.gather(*(stub.ModelInfer(r) for r in requests))
        for request, response in zip(requests, responses, strict=True):
            assert response.model_name == request.model_name
            assert response.raw_output_contents[0] == request.raw_input_contents[0]

    serve(test)


def test_large_answers_on_many_streams_share_the_windows() -> None:
    async def test(stub: Any, _servicer: Echo, _server: Any) -> None:
        requests = [infer((1 << 20) + i * 4099, model=f"m{i}") for i in range(6)]
        responses = await asyncio.gather(*(stub.ModelInfer(r) for r in requests))
        for request, response in zip(requests, responses, strict=True):
            assert response.raw_output_contents[0] == request.raw_input_contents[0]

    serve(test)


def test_cancelled_calls_and_dropped_connections_leave_the_server_serving() -> None:
    async def test(stub: Any, servicer: Echo, server: grpc_h2.H2GrpcServer) -> None:
        servicer.release.clear()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(infer(10), timeout=0.2)  # the client resets the stream
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        port = server.server.sockets[0].getsockname()[1]
        other = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        pending = asyncio.ensure_future(pb_grpc.GRPCInferenceServiceStub(other).ModelInfer(infer(10)))
        await asyncio.sleep(0.2)
        await other.close()  # the connection goes away with a call in flight
        with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):  # as grpcio reports it
            await pending
        servicer.release.set()
        response = await stub.ModelInfer(infer(1000))
        assert response.raw_output_contents[0] == infer(1000).raw_input_contents[0]
        await asyncio.sleep(0.1)
        assert sum(c.active for c in server.connections) == 0

    serve(test)


def test_gzip_compressed_calls() -> None:
    async def test(stub: Any, _servicer: Echo, _server: Any) -> None:
        request = infer(200_000)
        response = await stub.ModelInfer(request, compression=grpc.Compression.Gzip)
        assert response.raw_output_contents[0] == request.raw_input_contents[0]

    serve(test)


def test_status_codes() -> None:
    async def test(stub: Any, _servicer: Echo, _server: Any) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelReady(pb.ModelReadyRequest(name="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "unknown model 'nope' ü%"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ServerMetadata(pb.ServerMetadataRequest())  # not implemented by Echo
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(infer(MAX_MESSAGE + 100))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live  # the connection survives

    serve(test)


def test_unknown_method_is_unimplemented() -> None:
    async def test(stub: Any, _servicer: Echo, server: Any) -> None:
        port = server.server.sockets[0].getsockname()[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/Nope")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

    serve(test)


def test_stop_lets_calls_in_flight_finish() -> None:
    async def test(stub: Any, servicer: Echo, server: grpc_h2.H2GrpcServer) -> None:
        servicer.release.clear()
        calls = [asyncio.ensure_future(stub.ModelInfer(infer(10))) for _ in range(3)]
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(server.stop(5))
        await asyncio.sleep(0.1)
        servicer.release.set()
        responses = await asyncio.gather(*calls)
        assert all(r.raw_output_contents[0] == infer(10).raw_input_contents[0] for r in responses)
        await stopping

    serve(test)


def test_tls_with_alpn_h2(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def main() -> None:
        methods = grpc_h2.methods_of(Echo(), pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb)
        server = grpc_h2.H2GrpcServer(methods, ServerLimits(max_body_bytes=MAX_MESSAGE))
        port = await server.start("127.0.0.1", 0, context)
        credentials = grpc.ssl_channel_credentials(pem)
        options = [("grpc.ssl_target_name_override", "localhost")]
        try:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = infer(100_000)
                response = await stub.ModelInfer(request)
                assert response.raw_output_contents[0] == request.raw_input_contents[0]
        finally:
            await server.stop(1)

    asyncio.run(main())

"""The gRPC front end: inference.GRPCInferenceService, sharing the REST event loop.

The servicer is written against grpc.aio's servicer API; it runs on grpc_h2, a lean asyncio
HTTP/2 transport (grpcio's own server capped the throughput, see grpc_h2's docstring).

Typed ``contents`` and ``raw_input_contents`` are both accepted; a request that sent raw inputs
gets ``raw_output_contents`` back (what tritonclient expects), otherwise typed contents. Errors
map to status codes through the same error classes as REST (NOT_FOUND, INVALID_ARGUMENT,
UNAUTHENTICATED, ...).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import grpc
from google.protobuf import json_format

from appliance.workloads.serving import grpc_h2
from appliance.workloads.serving.errors import BadRequest, InferenceError
from appliance.workloads.serving.grpc_codec import decode_inputs, encode_outputs, output_targets, wants_raw
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.peer import FORWARDED_HEADER
from appliance.workloads.serving.proto_gen import grpc_predict_v2_pb2 as pb
from appliance.workloads.serving.proto_gen import grpc_predict_v2_pb2_grpc as pb_grpc
from appliance.workloads.serving.service import InferenceService
from appliance.workloads.serving.shared_memory import CUDA_REFUSED, CallerRegions, cuda_status

SERVICE = "GRPCInferenceService"


def _regions(service: InferenceService, context: Any) -> CallerRegions:
    """The shared-memory regions as this call's caller may use them."""
    forwarded = any(key == FORWARDED_HEADER for key, _ in context.invocation_metadata() or ())
    return service.shm.for_caller(getattr(context, "peer", None), forwarded)


def _authorization(context: grpc_h2.Context) -> str | None:
    token = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            token = value if isinstance(value, str) else value.decode()
    return token


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The gRPC methods over an InferenceService."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def _auth(self, context: grpc_h2.Context) -> None:
        if not self.service.tokens:
            return
        try:
            self.service.check_auth(_authorization(context), "grpc")
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)

    async def _admin(self, context: grpc_h2.Context) -> None:
        """The repository methods' gate: the admin token (inference token: PERMISSION_DENIED)."""
        try:
            self.service.check_admin(_authorization(context))
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.service.server_ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        if request.name not in self.service.repo.entries:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version or None))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        try:
            model, _ = self.service.repo.get(request.name, request.version or None)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        meta = model.metadata()
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        started = time.perf_counter()
        service, name, version = self.service, request.model_name, ""
        service.begin("grpc")
        try:
            shm = _regions(service, context)
            arrays, datatypes = decode_inputs(request, shm)
            requested = [o.name for o in request.outputs] or None
            in_shm = output_targets(request, shm) if requested else None
            decoded_at = time.perf_counter()
            model, names, outputs = await service.infer(
                name, request.model_version or None, arrays, datatypes, requested
            )
            version = model.version
            inferred_at = time.perf_counter()
            response = pb.ModelInferResponse(
                model_name=model.name, model_version=model.version, id=request.id
            )
            encode_outputs(response, names, outputs, wants_raw(request), in_shm)
        except InferenceError as err:
            service.record(name, version, "grpc", err.outcome, started)
            await context.abort(err.grpc_code, err.message)
        finally:
            service.end("grpc")
        service.record(name, version, "grpc", "success", started, decoded_at, inferred_at)
        return response

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        """Triton's model configuration extension (what perf_analyzer asks for first)."""
        await self._auth(context)
        try:
            config = self.service.model_config(request.name, request.version or None)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        """Triton's statistics extension: one model, or every loaded one when the name is empty."""
        await self._auth(context)
        try:
            stats = self.service.model_statistics(request.name or None, request.version or None)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        """Triton's system shared-memory extension: every region, or the one named."""
        await self._auth(context)
        try:
            regions = _regions(self.service, context).status(request.name or None)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(regions={r["name"]: status(**r) for r in regions})

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        try:
            _regions(self.service, context).register(
                request.name, request.key, request.offset, request.byte_size
            )
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        """One region, or every one when the name is empty."""
        await self._auth(context)
        try:
            _regions(self.service, context).unregister(request.name or None)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        """The CUDA twin: never a region here (clients unregister all of both kinds)."""
        await self._auth(context)
        try:
            cuda_status(request.name or None)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        await context.abort(BadRequest.grpc_code, CUDA_REFUSED)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._auth(context)
        return pb.CudaSharedMemoryUnregisterResponse()

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._admin(context)
        name = request.triton_model_name or request.model_name
        try:
            await self.service.repo.load(name)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._admin(context)
        name = request.triton_model_name or request.model_name
        try:
            self.service.repo.unload(name)
        except InferenceError as err:
            await context.abort(err.grpc_code, err.message)
        return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)


# Methods anyone may call (health probes); the repository methods need the admin token.
_PUBLIC = frozenset(f"/inference.{SERVICE}/{m}" for m in ("ServerLive", "ServerReady"))
_ADMIN = frozenset(f"/inference.{SERVICE}/{m}" for m in ("RepositoryModelLoad", "RepositoryModelUnload"))


def authorizer(service: InferenceService) -> grpc_h2.Authorize:
    """The transport's gate, decided from the HEADERS frame before any body is read or inflated.

    It applies the servicer's own rules (the servicer checks again; this one only makes the
    refusal come first): public health methods, the admin token for the repository methods, the
    inference token for the rest. It raises InferenceError subclasses (UNAUTHENTICATED, ...).
    """

    def authorize(path: str, authorization: str | None) -> None:
        if path in _PUBLIC:
            return
        if path in _ADMIN:
            service.check_admin(authorization)
        else:
            service.check_auth(authorization, "grpc")

    return authorize


async def start(
    service: InferenceService,
    host: str,
    port: int,
    limits: ServerLimits,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> tuple[grpc_h2.H2GrpcServer, int]:
    """Start the gRPC server on host:port (0: any free port); returns it and its port.

    The transport is grpc_h2's asyncio HTTP/2 server (about an eighth of grpc.aio's CPU per call
    here, see benchmarks/README.md) under ``limits``, refusing calls without the right token
    from their headers; ``ssl_context`` serves gRPC over TLS.
    """
    methods = grpc_h2.methods_of(InferenceServicer(service), pb.DESCRIPTOR.services_by_name[SERVICE], pb)
    server = grpc_h2.H2GrpcServer(methods, limits, authorizer(service), small_calls=_PUBLIC)
    bound = await server.start(host, port, ssl_context, sock)
    return server, bound

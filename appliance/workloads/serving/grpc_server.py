"""The gRPC front end: inference.GRPCInferenceService, sharing the REST event loop.

The servicer is written against grpc.aio's servicer API; it runs on grpc_h2, a lean asyncio
HTTP/2 transport (grpcio's own server capped the throughput, see grpc_h2's docstring).

Typed ``contents`` and ``raw_input_contents`` are both accepted; a request that sent raw inputs
gets ``raw_output_contents`` back (what tritonclient expects), otherwise typed contents. Errors
map to status codes through the same error classes as REST (NOT_FOUND, INVALID_ARGUMENT,
UNAUTHENTICATED, ...).
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from appliance.workloads.serving import grpc_h2
from appliance.workloads.serving.errors import BadRequest, InferenceError
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.proto_gen import grpc_predict_v2_pb2 as pb
from appliance.workloads.serving.proto_gen import grpc_predict_v2_pb2_grpc as pb_grpc
from appliance.workloads.serving.service import InferenceService
from appliance.workloads.serving.tensors import datatype_of, from_raw, numpy_type, to_raw

SERVICE = "GRPCInferenceService"
# datatype -> field of InferTensorContents
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _decode_inputs(request: pb.ModelInferRequest) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; give one per input"
        )
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    if not request.inputs:
        raise BadRequest("request has no inputs")
    for i, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        if name in arrays:
            raise BadRequest(f"input '{name}' is given twice")
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(f"input '{name}': shape must be non-negative, got {list(shape)}")
        if raw:
            arrays[name] = from_raw(raw[i], datatype, shape, name)
        else:
            arrays[name] = _from_contents(tensor, shape)
        datatypes[name] = datatype
    return arrays, datatypes


def _from_contents(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    dtype = numpy_type(datatype, name)
    field = _CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"input '{name}': {datatype} travels only in raw_input_contents")
    array = _packed_fixed(tensor.contents, datatype)
    if array is None:
        values = getattr(tensor.contents, field)
        # list() first: numpy reads a protobuf repeated field element by element (measured 4x slower)
        array = np.array(list(values), dtype=object if datatype == "BYTES" else dtype)
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(
            f"input '{name}': shape {list(shape)} needs {expected} values, contents.{field} has {array.size}"
        )
    return array.reshape(shape)


# FP32/FP64 contents: (tag of the packed field, its little-endian element type). Only these are
# fixed-width on the wire; the integer fields are varints and BOOL is left to the generic path.
_PACKED_FIXED: dict[str, tuple[int, np.dtype[Any]]] = {
    "FP32": (6 << 3 | 2, np.dtype("<f4")),
    "FP64": (7 << 3 | 2, np.dtype("<f8")),
}


def _packed_fixed(contents: Any, datatype: str) -> np.ndarray | None:
    """The FP32/FP64 typed contents as an array read straight from their wire bytes, or None
    when the message is not that one packed field alone (then the generic path decides).

    Going through Python floats (list of the repeated field, then numpy) cost about 40 ns a
    value, 0.5 ms for one [1,3,64,64] image; re-serializing the contents is a memory copy in
    upb, and a packed fixed-width field is exactly the little-endian array numpy reads.
    """
    spec = _PACKED_FIXED.get(datatype)
    if spec is None:
        return None
    tag, dtype = spec
    blob = contents.SerializeToString()
    if len(blob) < 2 or blob[0] != tag:
        return None
    length, shift, pos = 0, 0, 1
    while True:  # the field's length, a varint of at most 10 bytes
        if pos >= len(blob) or pos > 10:
            return None
        byte = blob[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if pos + length != len(blob) or length % dtype.itemsize:
        return None  # another field follows, or the field is cut: not the fast path's to judge
    return np.frombuffer(blob, dtype, count=length // dtype.itemsize, offset=pos)


def _encode(response: pb.ModelInferResponse, names: list[str], arrays: list[np.ndarray], raw: bool) -> None:
    for name, array in zip(names, arrays, strict=True):
        datatype = datatype_of(array)
        out = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw or datatype == "FP16":
            response.raw_output_contents.append(to_raw(array))
        elif datatype == "BYTES":
            out.contents.bytes_contents.extend(
                v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()
            )
        elif datatype in _PACKED_FIXED:
            # the packed field's wire bytes are the array's: no Python float per value
            tag, dtype = _PACKED_FIXED[datatype]
            packed = np.ascontiguousarray(array, dtype).tobytes()
            out.contents.MergeFromString(bytes([tag]) + _varint(len(packed)) + packed)
        else:
            getattr(out.contents, _CONTENTS[datatype]).extend(array.ravel().tolist())


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int (a length-delimited field's length)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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
            arrays, datatypes = _decode_inputs(request)
            requested = [o.name for o in request.outputs] or None
            decoded_at = time.perf_counter()
            model, names, outputs = await service.infer(
                name, request.model_version or None, arrays, datatypes, requested
            )
            version = model.version
            inferred_at = time.perf_counter()
            response = pb.ModelInferResponse(
                model_name=model.name, model_version=model.version, id=request.id
            )
            _encode(response, names, outputs, raw=bool(request.raw_input_contents))
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
    server = grpc_h2.H2GrpcServer(methods, limits, authorizer(service))
    bound = await server.start(host, port, ssl_context, sock)
    return server, bound

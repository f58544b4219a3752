"""REST routes of the Open Inference Protocol v2 and the model repository extension.

Who may call what is decided in ``admit``, from the request head alone (the body is not read
yet): /v2/health/* is public (probes), the repository's load/unload need the admin token,
everything else (inference, metadata, model readiness, the repository index) the inference token.
``admit`` splits and decodes the path once and ``dispatch`` routes on those same segments, so an
encoded path cannot be classed one way and routed another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote

import orjson

from appliance.workloads.serving import rest_codec
from appliance.workloads.serving.errors import (
    BadRequest,
    InferenceError,
    MethodNotAllowed,
    NotFound,
    Unavailable,
)
from appliance.workloads.serving.http_server import Request, Response, Router
from appliance.workloads.serving.peer import FORWARDED_HEADER
from appliance.workloads.serving.service import InferenceService
from appliance.workloads.serving.shared_memory import CUDA_REFUSED, CallerRegions, cuda_status

log = logging.getLogger(__name__)

_OK = Response(200, b"{}")
_OCTET = b"application/octet-stream"


def _json(doc: object, status: int = 200) -> Response:
    return Response(status, orjson.dumps(doc))


def _method(req: Request, *allowed: str) -> None:
    if req.method not in allowed:
        raise MethodNotAllowed(f"{req.method} is not allowed on {req.path} (use {' or '.join(allowed)})")


def _probe_refusal(req: Request) -> InferenceError | None:
    """The health routes are open to anyone: a probe is a GET without a body, and anything else is
    refused from the head, so that no caller without a token has a body read, held or inflated."""
    if req.method != "GET":
        return MethodNotAllowed(f"{req.path} takes GET (a health probe), not {req.method}")
    if req.has_body():
        return BadRequest(f"{req.path} takes no request body (a health probe)")
    return None


class RestRouter(Router):
    """Maps /v2/... paths to the InferenceService."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def admit(self, req: Request) -> InferenceError | None:
        parts = req.parts = [unquote(p) for p in req.path.strip("/").split("/")]
        if len(parts) == 3 and parts[1] == "health" and parts[0] == "v2":
            return _probe_refusal(req)
        try:
            if len(parts) > 2 and parts[1] == "repository" and parts[2] != "index":
                self.service.check_admin(req.headers.get("authorization"))
            else:
                index = len(parts) == 3 and parts[1] == "repository"  # the admin reads it too
                self.service.check_auth(req.headers.get("authorization"), "rest", admin_ok=index)
        except InferenceError as err:
            return err
        return None

    def dispatch(self, req: Request) -> Response | Awaitable[Response]:
        parts = req.parts
        if parts is None:
            raise InferenceError("request dispatched without admission")  # a bug: 500
        if not parts or parts[0] != "v2":
            raise NotFound(f"no route {req.method} {req.path} (the API lives under /v2)")
        if parts[1:2] == ["health"] and len(parts) == 3:
            _method(req, "GET")
            return self._health(parts[2], req.path)
        if parts[1:2] == ["models"] and len(parts) >= 3 and parts[-1] == "infer" and req.method == "POST":
            name, version = _model_ref(parts[2:-1], req.path)
            return self._run_infer(req, name, version)
        if len(parts) == 1:
            _method(req, "GET")
            return _json(self.service.server_metadata())
        if parts[1:] == ["models", "stats"]:
            _method(req, "GET")
            return _json(self.service.model_statistics(None, None))
        if parts[1] == "models" and len(parts) >= 3:
            return self._model_route(req, parts[2:])
        if parts[1] == "repository":
            return self._repository(req, parts[2:])
        if parts[1] in ("systemsharedmemory", "cudasharedmemory"):
            return self._shared_memory(req, parts[1] == "cudasharedmemory", parts[2:])
        raise NotFound(f"no route {req.method} {req.path}")

    def _health(self, what: str, path: str) -> Response:
        if what == "live":
            return _json({"live": True})
        if what == "ready":
            ready = self.service.server_ready()
            return _json({"ready": ready}, 200 if ready else 503)
        raise NotFound(f"no route GET {path} (use /v2/health/live or /v2/health/ready)")

    def _model_route(self, req: Request, rest: list[str]) -> Response | Awaitable[Response]:
        actions = ("ready", "infer", "config", "stats")
        action = rest[-1] if rest[-1] in actions and len(rest) in (2, 4) else None
        name, version = _model_ref(rest[:-1] if action else rest, req.path)
        if action == "infer":
            _method(req, "POST")
        _method(req, "GET")
        if action == "config":
            return _json(self.service.model_config(name, version))
        if action == "stats":
            return _json(self.service.model_statistics(name, version))
        if action == "ready":
            if name not in self.service.repo.entries:
                raise NotFound(f"unknown model '{name}'")
            ready = self.service.model_ready(name, version)
            return _json({"name": name, "ready": ready}, 200 if ready else 503)
        model, _ = self.service.repo.get(name, version)
        return _json(model.metadata())

    async def _run_infer(self, req: Request, name: str, version: str | None) -> Response:
        started = time.perf_counter()
        service = self.service
        service.begin("rest")
        model_version = ""
        try:
            header = req.headers.get("inference-header-content-length")
            if header is not None and not header.isdigit():
                raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header!r}")
            decoded = rest_codec.decode(
                req.body, int(header) if header is not None else None, _regions(service, req)
            )
            decoded_at = time.perf_counter()
            model, names, arrays = await service.infer(
                name, version, decoded.arrays, decoded.datatypes, decoded.outputs
            )
            model_version = model.version
            inferred_at = time.perf_counter()
            body, json_len = rest_codec.encode(model.name, model.version, decoded, names, arrays)
        except InferenceError as err:
            if err.outcome != "unauthorized":
                service.record(name, model_version, "rest", err.outcome, started)
            raise
        finally:
            service.end("rest")
        service.record(name, model_version, "rest", "success", started, decoded_at, inferred_at)
        if json_len is None:
            return Response(200, body)
        return Response(200, body, _OCTET, [("Inference-Header-Content-Length", str(json_len))])

    def _shared_memory(self, req: Request, cuda: bool, rest: list[str]) -> Response:
        """Triton's shared-memory extensions: [region/NAME/]status, region/NAME/register,
        [region/NAME/]unregister; the CUDA kind never holds a region."""
        shm = _regions(self.service, req)
        name = rest[1] if len(rest) == 3 and rest[0] == "region" else None
        action = rest[-1] if len(rest) in (1, 3) and (len(rest) == 1 or name) else None
        if action == "status":
            _method(req, "GET")
            return _json(cuda_status(name) if cuda else shm.status(name))
        if action == "unregister":
            _method(req, "POST")
            if not cuda:
                shm.unregister(name)
            return _OK
        if action == "register" and name:
            _method(req, "POST")
            if cuda:
                raise BadRequest(CUDA_REFUSED)
            doc = _json_body(req.body, "shared memory register request")
            shm.register(name, doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
            return _OK
        raise NotFound(
            f"no route {req.method} {req.path} (use /v2/{_shm_kind(cuda)}[/region/NAME]/status, "
            "/region/NAME/register or [/region/NAME]/unregister)"
        )

    def _repository(self, req: Request, rest: list[str]) -> Response | Awaitable[Response]:
        if rest == ["index"]:
            _method(req, "POST", "GET")
            index = self.service.repo.index()
            if _json_body(req.body, "index request").get("ready") is True:
                index = [m for m in index if m["state"] == "READY"]
            return _json(index)
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            _method(req, "POST")
            if rest[2] == "unload":
                self.service.repo.unload(rest[1])
                return _OK
            return self._load(rest[1], req.body)
        raise NotFound(f"no route {req.method} {req.path}")

    async def _load(self, name: str, body: bytes) -> Response:
        params = _json_body(body, "load request").get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadRequest("'parameters' must be an object")
        uri = (params or {}).get("uri")
        if uri is not None and not isinstance(uri, str):
            raise BadRequest("parameters.uri must be a string (a path, s3:// or models:/ URI)")
        try:
            await self.service.repo.load(name, uri)
        except Unavailable as err:
            raise BadRequest(err.message) from None
        return _OK


def _regions(service: InferenceService, req: Request) -> CallerRegions:
    """The shared-memory regions as this request's caller may use them."""
    return service.shm.for_caller(req.peer, FORWARDED_HEADER in req.headers)


def _shm_kind(cuda: bool) -> str:
    return "cudasharedmemory" if cuda else "systemsharedmemory"


def _json_body(body: bytes, what: str) -> dict[str, Any]:
    """An optional JSON object body (empty: {})."""
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"malformed JSON in {what}: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} body must be a JSON object")
    return doc


def _model_ref(parts: list[str], path: str) -> tuple[str, str | None]:
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    raise NotFound(
        f"no route {path} (expected /v2/models/NAME[/versions/VERSION][/ready|/infer|/config|/stats])"
    )

"""The protocol-neutral server: auth, metadata, inference and metrics shared by REST and gRPC.

The front ends only translate their wire format to numpy arrays and back; every rule about
what a valid request is, and every metric, lives here once.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from appliance import __version__
from appliance.workloads.serving.errors import BadRequest, Forbidden, InferenceError, Unauthorized
from appliance.workloads.serving.metrics import ServingMetrics
from appliance.workloads.serving.model import LoadedModel
from appliance.workloads.serving.replica_metrics import ConcurrencyClock, ReplicaCollector
from appliance.workloads.serving.repository import ModelRepository
from appliance.workloads.serving.shared_memory import NO_REGIONS, SharedMemoryRegions
from appliance.workloads.serving.triton import ModelStats, model_config

SERVER_NAME = "appliance-onnx-server"
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "statistics_prometheus",
]


class InferenceService:
    """Everything a request needs, whichever protocol it came in on."""

    def __init__(
        self,
        repo: ModelRepository,
        metrics: ServingMetrics,
        tokens: frozenset[str] = frozenset(),
        admin_tokens: frozenset[str] = frozenset(),
        shm: SharedMemoryRegions | None = None,
    ) -> None:
        self.repo = repo
        self.shm = shm or NO_REGIONS.regions
        """Triton's system shared-memory regions (refused unless the server allows them)."""
        self.metrics = metrics
        self.tokens = tokens
        """Inference tokens: inference, metadata, readiness of a model, the repository index."""
        self.admin_tokens = admin_tokens
        """Admin tokens: the repository API's load and unload (what changes what is served)."""
        self._tokens = [t.encode() for t in tokens]
        self._admin_tokens = [t.encode() for t in admin_tokens]
        self.ready = False
        self._active = 0
        self._gauges = {p: metrics.child(metrics.in_flight, p) for p in ("rest", "grpc")}
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._clock = ConcurrencyClock()
        metrics.registry.register(ReplicaCollector(self._clock, repo.models))
        repo.on_batch = self._on_batch

    def begin(self, protocol: str) -> None:
        """An inference request starts (in-flight gauge, the autoscaler's concurrency integral,
        and the count shutdown waits on)."""
        self._active += 1
        self._clock.change(1)
        self._gauges[protocol].inc()

    def end(self, protocol: str) -> None:
        self._active -= 1
        self._clock.change(-1)
        self._gauges[protocol].dec()

    def in_flight(self) -> int:
        """Inference requests being served now, on both protocols."""
        return self._active

    # auth -----------------------------------------------------------------------------------
    def auth_off(self) -> bool:
        """No token of either kind: the test-only mode where every call is open."""
        return not self.tokens and not self.admin_tokens

    def check_auth(self, authorization: str | None, protocol: str, admin_ok: bool = False) -> None:
        """Raise Unauthorized unless inference auth is off or the header is 'Bearer <a valid
        inference token>' (or, with ``admin_ok``, an admin token: the repository index)."""
        if not self.tokens:
            return
        given = _bearer(authorization)
        if given is not None and (
            _matches(given, self._tokens) or (admin_ok and _matches(given, self._admin_tokens))
        ):
            return
        self.metrics.child(self.metrics.requests, "", "", protocol, "unauthorized").inc()
        raise Unauthorized("missing or invalid bearer token (send 'Authorization: Bearer <token>')")

    def check_admin(self, authorization: str | None) -> None:
        """The repository API's gate: an admin token, or nothing when auth is off altogether.

        No token or a wrong one: 401. The inference token: 403 saying which credential the call
        needs (the admin token; or, on a server started without one, that the API is closed)."""
        if self.auth_off():
            return
        given = _bearer(authorization)
        if given is not None and _matches(given, self._admin_tokens):
            return
        if given is None:
            raise Unauthorized(
                "the model repository API needs the admin token (send 'Authorization: Bearer <admin token>')"
            )
        if _matches(given, self._tokens):
            if not self._admin_tokens:
                raise Forbidden(
                    "the model repository API is closed: this server was started without an admin "
                    "token (--admin-token-file)"
                )
            raise Forbidden(
                "the inference token cannot load or unload models: use the admin token "
                "(STATE/secrets/serving_admin_token in the stack)"
            )
        raise Unauthorized("invalid admin token (send 'Authorization: Bearer <admin token>')")

    # metadata -------------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        extensions = EXTENSIONS + (["system_shared_memory"] if self.shm.allowed else [])
        return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}

    def server_ready(self) -> bool:
        """Up and serving every model it should (a model still waiting for its alias: not ready)."""
        return self.ready and self.repo.all_ready()

    def model_ready(self, name: str, version: str | None) -> bool:
        entry = self.repo.entries.get(name)
        if entry is None or entry.model is None:
            return False
        return not version or version == entry.model.version

    # inference ------------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: str | None,
        arrays: dict[str, np.ndarray],
        datatypes: dict[str, str],
        requested: list[str] | None,
    ) -> tuple[LoadedModel, list[str], list[np.ndarray]]:
        """Check the request against the model, run it through the batcher, pick the outputs."""
        model, batcher = self.repo.get(name, version)
        for input_name, array in arrays.items():
            if array.size == 0:  # nothing to infer; and an empty batch has no drift statistics
                raise BadRequest(
                    f"input '{input_name}': shape {list(array.shape)} holds no values; send at least one row"
                )
        feeds = model.check_inputs(arrays, datatypes)
        if requested is not None:
            unknown = [n for n in requested if n not in model.output_names]
            if unknown:
                raise BadRequest(
                    f"model '{name}' has no output {', '.join(map(repr, unknown))}; "
                    f"its outputs are {', '.join(map(repr, model.output_names))}"
                )
        try:
            outputs = await batcher.submit(feeds)
        except InvalidArgument as err:
            raise BadRequest(f"model '{name}' rejected the input: {err}") from None
        except InferenceError:
            raise
        except Exception as err:
            raise InferenceError(f"model '{name}' failed: {err}") from err
        if requested is None:
            return model, model.output_names, outputs
        index = {n: i for i, n in enumerate(model.output_names)}
        return model, requested, [outputs[index[n]] for n in requested]

    def record(
        self,
        model: str,
        version: str,
        protocol: str,
        outcome: str,
        started: float,
        decoded: float | None = None,
        inferred: float | None = None,
    ) -> None:
        """Count a finished request and its latency (and, for the statistics extension, the
        time spent decoding it, up to ``decoded``, and encoding the answer, after ``inferred``)."""
        m = self.metrics
        now = time.perf_counter()
        entry = self.repo.entries.get(model)
        if entry is None:  # unknown names must not mint label values
            model, version = "", ""
        m.child(m.requests, model, version, protocol, outcome).inc()
        m.child(m.duration, model, protocol).observe(now - started)
        loaded = entry.model if entry is not None else None
        if loaded is not None and (not version or version == loaded.version):
            self.stats_of(loaded).request(
                outcome == "success",
                now - started,
                None if decoded is None else decoded - started,
                None if inferred is None else now - inferred,
            )

    # Triton's extensions ------------------------------------------------------------------------
    def stats_of(self, model: LoadedModel) -> ModelStats:
        """The statistics of a model version (made on first use; a reload starts a new one)."""
        key = (model.name, model.version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ModelStats(model.name, model.version)
        return stats

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration of a loaded model (NotFound otherwise)."""
        model, batcher = self.repo.get(name, version)
        return model_config(model, batcher)

    def model_statistics(self, name: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics document: one model (NotFound if unknown) or every loaded one."""
        models = [self.repo.get(name, version)[0]] if name else self.repo.models()
        return {"model_stats": [self.stats_of(m).as_dict() for m in models]}

    def _on_batch(self, model: LoadedModel, rows: int, compute_s: float, waits: list[float]) -> None:
        self.stats_of(model).execution(rows, compute_s, waits)
        m = self.metrics
        m.child(m.batch, model.name).observe(rows)
        m.child(m.compute, model.name).observe(compute_s)
        queue = m.child(m.queue, model.name)
        for w in waits:
            queue.observe(w)


def _bearer(authorization: str | None) -> bytes | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip().encode()
    return None


def _matches(given: bytes, tokens: list[bytes]) -> bool:
    """Constant-time comparison against every token (no early exit on the first match)."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token)
    return found

"""Running the server: load the models, start REST, gRPC, /metrics and the reload poller.

Everything runs on one asyncio loop (uvloop when installed: measured faster for the REST front
end); ONNX Runtime work for larger models goes to worker threads (see batcher.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance.runtimes import handover
from appliance.workloads.serving import allocator, drain, grpc_server, http_server
from appliance.workloads.serving.config import ServeConfig
from appliance.workloads.serving.errors import Unavailable
from appliance.workloads.serving.failed_versions import FIRST_RETRY_S
from appliance.workloads.serving.metrics import ServingMetrics
from appliance.workloads.serving.model import SessionOptions
from appliance.workloads.serving.repository import ModelRepository
from appliance.workloads.serving.rest_app import RestRouter
from appliance.workloads.serving.service import InferenceService
from appliance.workloads.serving.shared_memory import SharedMemoryRegions

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 5.0


def build_service(config: ServeConfig) -> InferenceService:
    repo = ModelRepository(
        SessionOptions.choose(config.intra_op_threads, config.inter_op_threads, config.execution_provider),
        config.max_batch_size,
        config.max_queue_delay_us / 1e6,
        config.drift_window,
        cache_dir=config.cache_dir,
        first_retry_s=config.poll_seconds if config.poll_seconds > 0 else FIRST_RETRY_S,
    )
    for name, uri in config.models:
        repo.add(name, uri)
    shm = SharedMemoryRegions(config.limits, allowed=config.allow_client_shm)
    return InferenceService(repo, ServingMetrics(repo.models), config.tokens, config.admin_tokens, shm)


async def serve(
    config: ServeConfig,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when it is None)."""
    service = build_service(config)
    for entry in list(service.repo.entries.values()):
        try:
            await service.repo.load(entry.name)
        except Unavailable as err:
            if not config.wait_for_models or config.poll_seconds <= 0:
                raise
            log.warning("%s; retrying every %ss, not ready until then", err.message, config.poll_seconds)
    gc.freeze()  # startup objects (sessions, modules) leave the GC's scans: fewer latency spikes
    by_signal = stop is None
    stop = stop or _signal_event()
    # Models loaded: only now take the predecessor's listening sockets, if the runtime held them.
    held = handover.receive(
        os.environ.get(handover.HANDOVER_ENV), config.host, (config.http_port, config.grpc_port)
    )
    rest = await http_server.start(
        RestRouter(service), config.host, config.http_port, config.limits, sock=held.get(config.http_port)
    )
    ports: dict[str, Any] = {"http_port": http_server.bound_port(rest)}
    grpc = None
    if config.grpc_port >= 0:
        grpc, ports["grpc_port"] = await grpc_server.start(
            service, config.host, config.grpc_port, config.limits, sock=held.get(config.grpc_port)
        )
    metrics_http = None
    # A standby's metrics port is still the old server's: the supervised successor opens it.
    if config.metrics_port >= 0 and not os.environ.get(handover.OFFER_ENV):
        metrics_http = service.metrics.serve(config.metrics_port, config.host)
        ports["metrics_port"] = metrics_http.server_port
    poller = (
        asyncio.get_running_loop().create_task(service.repo.poll(config.poll_seconds))
        if config.poll_seconds > 0
        else None
    )
    service.ready = True
    if by_signal:  # SIGUSR1: stop listening, keep serving open connections (a replica leaving)
        listeners = [rest, *([grpc.server] if grpc is not None and grpc.server is not None else [])]
        drain.drain_on_signal(listeners, lambda: setattr(service, "ready", False))
    loop = asyncio.get_running_loop()
    standby = os.environ.get(handover.OFFER_ENV)
    handover.offer(  # lent to the next release's runtime; a standby stops once they are taken
        standby or os.environ.get(handover.HANDOVER_ENV),
        [rest, *([grpc.server] if grpc is not None and grpc.server is not None else [])],
        (lambda: loop.call_soon_threadsafe(stop.set)) if standby else None,
    )
    ready = {"event": "ready", **ports, "models": [e["name"] for e in service.repo.index()]}
    (on_ready or _print_ready)(ready)
    try:
        await stop.wait()
    finally:
        service.ready = False  # probes see not-ready while the last requests finish
        if poller is not None:
            poller.cancel()
        grace_until = time.monotonic() + SHUTDOWN_GRACE_S
        # stop accepting; requests already read get their answers, no connection is reset
        rest_closed = asyncio.ensure_future(http_server.close_gracefully(rest, SHUTDOWN_GRACE_S))
        while service.in_flight() and time.monotonic() < grace_until:
            await asyncio.sleep(0.01)
        if grpc is not None:
            await grpc.stop(grace=max(0.0, grace_until - time.monotonic()))
        await rest_closed
        if metrics_http is not None:
            metrics_http.shutdown()
        service.repo.stopping.set()  # a download in progress gives up: exit joins its thread
        service.repo.executor.shutdown(wait=False, cancel_futures=True)
        service.repo.loader.shutdown(wait=False, cancel_futures=True)


def _print_ready(ready: dict[str, Any]) -> None:
    print(json.dumps(ready), flush=True)


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, event.set)
    return event


def run(config: ServeConfig) -> None:
    """Blocking entry point: uvloop when installed, plain asyncio otherwise; large request
    buffers kept for reuse (allocator.py), before any of them is made."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    allocator.keep_freed_buffers()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))

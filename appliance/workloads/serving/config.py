"""Settings of one model server, from the command line (``appliance serve`` or ``python -m``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from appliance.workloads.serving.limits import ServerLimits

PROVIDER_NAMES = ("auto", "cpu", "cuda")
"""What ``--execution-provider`` may name (``model.EXECUTION_PROVIDERS`` says what each runs on):
here, where the CLI reads them without importing ONNX Runtime."""

TOKEN_ENV = "APPLIANCE_SERVING_TOKEN"
ADMIN_TOKEN_ENV = "APPLIANCE_SERVING_ADMIN_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server needs; ports 0 mean 'any free port' (the ready line reports them)."""

    models: tuple[tuple[str | None, str], ...]
    """(name or None for a default from the URI, path or s3:// or models:/ URI)."""
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    """-1 turns gRPC off."""
    metrics_port: int = 8082
    """-1 turns the metrics endpoint off."""
    tokens: frozenset[str] = field(default_factory=frozenset)
    """Accepted inference bearer tokens; empty: inference auth off."""
    admin_tokens: frozenset[str] = field(default_factory=frozenset)
    """Tokens of the repository API (load/unload); none while inference tokens are set: that API
    is closed; none of either kind: everything open (tests only)."""
    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    poll_seconds: float = 30.0
    """How often to check every model's source for a new version; 0: never."""
    wait_for_models: bool = False
    """Start even when a model cannot be loaded yet (no champion registered so far): it is retried
    every ``poll_seconds`` and the server reports not ready until it loads. Off: exit instead."""
    drift_window: int = 1000
    cache_dir: Path | None = None
    """Where the last good version of every ``models:/`` model is kept, to serve through registry
    outages and restarts (``edge_cache``); None: no cache."""
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    execution_provider: str = "auto"  # one of PROVIDER_NAMES
    limits: ServerLimits = field(default_factory=ServerLimits)
    """Sizes, counts, timeouts and connections every client lives under (REST and gRPC)."""
    allow_client_shm: bool = False
    """Take Triton's system shared-memory extension: clients on this host may register POSIX
    shared-memory objects of the server's own user and pass tensors through them."""


def read_tokens(token: str | None, token_file: Path | None, env: str = TOKEN_ENV) -> frozenset[str]:
    """Tokens from a flag/env value and from a file (one per line, blanks and #comments skipped)."""
    tokens = set()
    value = token if token is not None else os.environ.get(env)
    if value and value.strip():
        tokens.add(value.strip())
    if token_file is not None:
        for line in token_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.add(line)
    return frozenset(tokens)


def parse_model_args(models: tuple[str, ...], names: tuple[str, ...]) -> tuple[tuple[str | None, str], ...]:
    """Pair ``--model`` values with ``--name`` values; ``--model NAME=URI`` names one inline.

    Raises ValueError with the fix when the counts cannot be paired.
    """
    if names and len(names) != len(models):
        raise ValueError(
            f"{len(names)} --name for {len(models)} --model: give one --name per --model, "
            "or write --model NAME=URI"
        )
    out: list[tuple[str | None, str]] = []
    for i, spec in enumerate(models):
        name: str | None = names[i] if names else None
        uri = spec
        if "=" in spec and not spec.startswith(("models:/", "s3://", "/", ".")):
            name, uri = spec.split("=", 1)
        out.append((name, uri))
    seen = [n for n, _ in out if n]
    if len(seen) != len(set(seen)):
        raise ValueError(f"model names must be unique, got {seen}")
    return tuple(out)

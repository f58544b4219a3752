"""The model server's limits against hostile or broken clients, one object for both front ends.

Why one object: REST (HTTP/1.1) and gRPC (HTTP/2) face the same callers on the same host, so a
limit means the same thing on both and is set once, in the answers file (``serving.limits``),
the ``appliance serve --limit NAME=VALUE`` flag, or the defaults below. The defaults are safe for
a model server on a workstation: generous for real inference traffic (a 64 MiB tensor body, a
few KiB of headers), tight enough that no single client can hold the event loop, the memory or
the connection table. docs/security.md lists each limit with what a client gets past it.

This module is light (pydantic only): the answers model imports it, and the installer core must
not pull onnxruntime in through it.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

PROXY_BODY_SLACK = 64 * 1024
"""Bytes a proxy in front of model servers (the TLS gateway, the replicas' balancer) takes past
their body limit before it refuses a body itself."""


def proxy_body_limit(max_body_bytes: int) -> int:
    """The largest body nginx in front of model servers takes (its ``client_max_body_size``): a
    little over theirs, so that a body near the limit (a gRPC message and its 5-byte frame) gets
    the model server's own answer, in its format, and one past it is refused before nginx would
    hold it on disk, credential unchecked, to send it on."""
    return max_body_bytes + PROXY_BODY_SLACK


class ServerLimits(BaseModel):
    """Limits every model-server connection lives under (REST and gRPC alike)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest request body (and largest decompressed body) in bytes. REST checks Content-Length
    before reading (413, and no ``100 Continue``); gRPC checks each message's length prefix."""
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Largest request header block in bytes (REST: 431; HTTP/2: advertised as
    SETTINGS_MAX_HEADER_LIST_SIZE, a larger block ends the connection with ENHANCE_YOUR_CALM)."""
    max_header_count: int = Field(100, ge=8)
    """Most header fields in one request (REST: 431; HTTP/2: RESOURCE_EXHAUSTED on that call)."""
    max_url_bytes: int = Field(8 * 1024, ge=256)
    """Longest request target (REST: 414)."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Seconds a client may take to send a whole request head (and, on HTTP/2, the connection
    preface and first SETTINGS): slow senders (slowloris) are closed past it."""
    body_timeout_s: float = Field(60.0, gt=0)
    """Seconds a client may take to send a request body once its head is in."""
    idle_timeout_s: float = Field(120.0, gt=0)
    """Seconds a keep-alive connection may sit with no request in flight before it is closed
    (HTTP/2: after a GOAWAY)."""
    max_connections: int = Field(1024, ge=1)
    """Open client connections per front end; past it new connections are closed at once."""
    max_pending_write_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    """Back-pressure: while a connection has more unsent answer bytes than this, the server stops
    reading from it (a client that never reads cannot make the server queue without bound)."""
    max_concurrent_streams: int = Field(128, ge=1)
    """HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS,
    enforced: more are refused with REFUSED_STREAM)."""
    max_continuation_frames: int = Field(16, ge=1)
    """Most CONTINUATION frames in one HTTP/2 header block (an empty-frame flood ends the
    connection with ENHANCE_YOUR_CALM); their bytes count against ``max_header_bytes``."""
    max_connection_buffer_bytes: int = Field(128 * 1024 * 1024, ge=1024 * 1024)
    """Request bytes one connection may hold buffered across all its streams and pipelined
    requests. HTTP/2: the connection's receive window, credited back only as calls take their
    bytes, so DATA past it is a FLOW_CONTROL_ERROR; REST stops reading from the connection until
    the requests already read are answered."""
    max_pipelined_requests: int = Field(32, ge=1)
    """REST: requests one HTTP/1.1 connection may have read and waiting for their answers
    (pipelining); at it the server stops reading from that connection until they are answered."""

    max_shm_regions: int = Field(64, ge=1)
    """Shared-memory regions registered at once (Triton's system shared-memory extension, on
    only with ``--allow-client-shm``); past it a registration is a 400."""
    max_shm_bytes: int = Field(1024 * 1024 * 1024, ge=4096)
    """Bytes of all registered shared-memory regions together (mapped from the clients'
    objects, not copied); past it a registration is a 400."""

    @property
    def json_arg(self) -> str:
        """The limits that differ from the defaults as compact JSON, for ``--limits-json`` (a
        property so that a stack template can say ``{answers.serving.limits.json_arg}``)."""
        return json.dumps(self.model_dump(exclude_defaults=True), separators=(",", ":"))

    @classmethod
    def from_pairs(cls, pairs: tuple[str, ...], base: ServerLimits | None = None) -> ServerLimits:
        """Limits from ``NAME=VALUE`` flags over ``base``; raises ValueError naming the bad one."""
        values = (base or cls()).model_dump()
        known = set(cls.model_fields)
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in known:
                raise ValueError(
                    f"--limit {pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}"
                )
            values[name] = value
        return cls.model_validate(values)

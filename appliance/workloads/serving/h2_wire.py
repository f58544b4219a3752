"""HTTP/2 wire pieces for grpc_h2: frame layout, the HPACK we send, request heads per RFC 9113 §8.

Why separate from the connection logic: these are pure functions and constants (no state, no
event loop), so the protocol module reads as the state machine it is, and the rules a request
head must follow are in one place.

What we send is encoded without Huffman and without the dynamic table, so every answer's header
block is a constant or a concatenation of constants plus literal values. What we receive is
decoded by ``hpack`` (python-hyper) and checked here: a request head that breaks RFC 9113 §8
(uppercase names, unknown or repeated pseudo-headers, pseudo-headers after regular fields or in
trailers, connection-specific fields, ``te`` other than ``trailers``, a missing ``:method``,
``:scheme`` or ``:path``, an empty ``:path``, a bad ``content-length``) is malformed: its stream is
reset with PROTOCOL_ERROR.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from typing import Any

import grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xA, 0xB

# settings identifiers
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384

FRAME = struct.Struct(">BHBBL")  # 24-bit length as (high byte, low 16 bits), type, flags, stream
U32 = struct.Struct(">L")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, U32.pack(code))


# HPACK encoding of what we send -----------------------------------------------------------------
def _int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name."""
    return b"\x00" + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # static table entry 8
_CONTENT_TYPE_NAME = b"\x0f\x10"  # literal without indexing, name: static entry 31 (content-type)
RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE_NAME + _int(16, 7, 0) + b"application/grpc"
OK_TRAILERS = literal(b"grpc-status", b"0")


def status_block(code: grpc.StatusCode, message: str) -> bytes:
    """grpc-status and grpc-message fields (a trailers-only answer adds RESPONSE_HEADERS first)."""
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


def http_error_head(status: int) -> bytes:
    """Headers of a plain HTTP answer to a request that is not gRPC (405, 415)."""
    text = b"text/plain; charset=utf-8"
    return literal(b":status", str(status).encode()) + _CONTENT_TYPE_NAME + _int(len(text), 7, 0) + text


def percent_encode(message: str) -> bytes:
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


# request heads ----------------------------------------------------------------------------------
STATIC_TABLE_SIZE = 61  # RFC 7541 Appendix A: indexes above this are the dynamic table's


def _read_int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 §5.1) at ``pos``: (value, position after it)."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _skip_string(block: bytes, pos: int) -> int:
    length, pos = _read_int(block, pos, 7)
    return pos + length


def context_free_inserts(block: bytes) -> tuple[int, ...] | None:
    """Which fields of a header block the decoder adds to its dynamic table, if the block's
    decoding does not depend on that table; ``None`` if it does.

    Why: a client's header blocks repeat call after call, and decoding one (Huffman, per-field
    Python in ``hpack``) costs more than the rest of a small gRPC call. A block that refers only to
    the static table and to literals decodes to the same fields whatever the dynamic table holds,
    so its decoding can be kept and reused; what it adds to the table (literals "with incremental
    indexing") must still be added each time it is received, for the blocks that refer to them.
    nginx's ``grpc_pass`` sends every request's ``:path`` and ``:authority`` that way, which made
    each of its blocks change the table. ``None`` for a reference to a dynamic entry or a table size
    update (RFC 7541 §6.3), whose decoding or effect depends on the decoder's state.

    The block must already have decoded without error (its structure is not checked again).
    """
    inserts: list[int] = []
    pos, end, field = 0, len(block), 0
    try:
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = _read_int(block, pos, 7)
            elif first & 0x40:  # literal with incremental indexing
                index, pos = _read_int(block, pos, 6)
                inserts.append(field)
            elif first & 0x20:  # dynamic table size update
                return None
            else:  # literal without indexing, or never indexed
                index, pos = _read_int(block, pos, 4)
            if index > STATIC_TABLE_SIZE:
                return None
            if not first & 0x80:
                if index == 0:
                    pos = _skip_string(block, pos)
                pos = _skip_string(block, pos)
            field += 1
    except IndexError:
        return None
    return tuple(inserts) if pos == end else None


_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


class Head:
    """A decoded header block, checked once per distinct block (clients repeat theirs).

    ``field_error`` is a rule broken whatever the block is (request head or trailers);
    ``request_error`` one broken only as a request head; a block is valid trailers when it has
    no ``field_error`` and no pseudo-header.
    """

    __slots__ = (
        "authorization",
        "content_length",
        "count",
        "encoding",
        "field_error",
        "grpc",
        "has_pseudo",
        "metadata",
        "method",
        "path",
        "request_error",
    )

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        pseudo: dict[bytes, bytes] = {}
        metadata: list[tuple[str, Any]] = []
        field_error = ""
        regular_seen = False
        content_type = b""
        content_length: int | None = None
        authorization: str | None = None
        self.encoding = b"identity"
        count = 0
        for name, value in headers:
            count += 1
            if name[:1] == b":":
                if regular_seen:
                    field_error = field_error or "pseudo-header after a regular field"
                elif name in pseudo:
                    field_error = field_error or f"repeated {name.decode('latin-1')}"
                elif name not in _REQUEST_PSEUDO:
                    field_error = field_error or f"pseudo-header {name.decode('latin-1')} not allowed"
                pseudo[name] = value
                continue
            regular_seen = True
            if name.lower() != name:
                field_error = field_error or "uppercase header field name"
            elif name in _CONNECTION_SPECIFIC:
                field_error = field_error or f"connection-specific field {name.decode('latin-1')}"
            elif name == b"te":
                if value != b"trailers":
                    field_error = field_error or "te other than trailers"
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                if not value.isdigit() or content_length is not None:
                    field_error = field_error or "bad content-length"
                else:
                    content_length = int(value)
            elif name == b"grpc-encoding":
                self.encoding = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
                metadata.append(("authorization", authorization))
            elif name.endswith(b"-bin"):
                try:
                    decoded: Any = base64.b64decode(value + b"==")
                except ValueError:
                    decoded = b""
                metadata.append((name.decode("latin-1"), decoded))
            elif not name.startswith(b"grpc-"):
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        self.count = count
        self.field_error = field_error
        self.has_pseudo = bool(pseudo)
        self.method = pseudo.get(b":method", b"")
        path = pseudo.get(b":path")
        self.request_error = ""
        if not (self.method and b":scheme" in pseudo and path is not None):
            self.request_error = "missing :method, :scheme or :path"
        elif not path:
            self.request_error = "empty :path"
        self.path = path.decode("latin-1") if path else ""
        self.grpc = self.method == b"POST" and content_type.startswith(b"application/grpc")
        self.content_length = content_length
        self.authorization = authorization
        self.metadata = tuple(metadata)

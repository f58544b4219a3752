"""Prometheus remote write 1.0 on the wire: snappy block compression and the ``WriteRequest``
protobuf, read and written with no library beyond the standard one.

The write gate (``appliance.monitoring.write_gate``) has to look inside what an edge box sends
(each series' labels) and send on a changed copy. The message is three levels of a small,
stable schema (``prometheus/prompb/types.proto``)::

    WriteRequest { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
                   repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
    Label        { string name = 1; string value = 2; }

so a hand-written reader of the protobuf wire format does it without a generated module (and
without adding protobuf to images that do not carry it). Samples are copied as the bytes they
came in; only the labels are decoded and written again. Snappy likewise: decoding is the block
format's four element kinds; encoding writes literals only, which every snappy reader takes (the
gate's copy goes over loopback or the private network to Prometheus, where size hardly matters).

Every bound is checked while reading, before the data it bounds is kept: the declared
uncompressed size, the number of series, labels per series, and each label's length. What is
malformed raises :class:`WireError` with what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

LITERAL_CHUNK = 65536
"""The longest literal the encoder writes at once (a two-byte length), as snappy's own encoder
splits its input into 64 KiB blocks."""


class WireError(ValueError):
    """A body that is not snappy, not a WriteRequest, or past one of the limits."""


@dataclass(frozen=True)
class Limits:
    """What one remote-write request may hold."""

    max_decoded_bytes: int = 32 * 1024 * 1024
    max_series: int = 50_000
    max_labels: int = 40
    max_name_bytes: int = 128
    max_value_bytes: int = 2048


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it (at most 10 bytes)."""
    result = shift = 0
    for i in range(pos, min(pos + 10, len(data))):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i + 1
        shift += 7
    raise WireError("a varint runs past the end of the data or over 10 bytes")


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


# --- snappy (block format) ---


def snappy_decode(data: bytes, max_size: int) -> bytes:
    """The uncompressed bytes of a snappy block; refuses a declared size over ``max_size`` before
    anything is allocated, and any copy that reaches before the start."""
    size, pos = _varint(data, 0)
    if size > max_size:
        raise WireError(f"the body declares {size} uncompressed bytes, over the limit of {max_size}")
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        kind = tag & 3
        if kind == 0:  # literal
            length = (tag >> 2) + 1
            pos += 1
            if length > 60:
                extra = length - 60
                if pos + extra > end:
                    raise WireError("a snappy literal's length runs past the end")
                length = int.from_bytes(data[pos : pos + extra], "little") + 1
                pos += extra
            if pos + length > end:
                raise WireError("a snappy literal runs past the end")
            out += data[pos : pos + length]
            pos += length
        else:
            if kind == 1:
                if pos + 2 > end:
                    raise WireError("a snappy copy runs past the end")
                length = 4 + ((tag >> 2) & 7)
                offset = ((tag >> 5) << 8) | data[pos + 1]
                pos += 2
            else:
                width = 2 if kind == 2 else 4
                if pos + 1 + width > end:
                    raise WireError("a snappy copy runs past the end")
                length = (tag >> 2) + 1
                offset = int.from_bytes(data[pos + 1 : pos + 1 + width], "little")
                pos += 1 + width
            if offset == 0 or offset > len(out):
                raise WireError(f"a snappy copy refers {offset} bytes back, outside what was decoded")
            if offset >= length:
                start = len(out) - offset
                out += out[start : start + length]
            else:  # overlapping: the last `offset` bytes repeat
                pattern = bytes(out[-offset:])
                out += (pattern * (length // offset + 1))[:length]
        if len(out) > size:
            raise WireError(f"the body decodes to more than the {size} bytes it declares")
    if len(out) != size:
        raise WireError(f"the body decodes to {len(out)} bytes, not the {size} it declares")
    return bytes(out)


def snappy_encode(data: bytes) -> bytes:
    """A snappy block holding ``data`` as literals (valid for every reader; no compression)."""
    out = bytearray()
    _put_varint(out, len(data))
    for start in range(0, len(data), LITERAL_CHUNK):
        chunk = data[start : start + LITERAL_CHUNK]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes((60 << 2, n))
        else:
            out.append(61 << 2)
            out += n.to_bytes(2, "little")
        out += chunk
    return bytes(out)


# --- protobuf wire format ---


def _next_field(data: bytes, pos: int, end: int, what: str) -> tuple[int, int, int, int]:
    """The field at ``pos`` of a message ending at ``end``: (number, wire type, where its value
    starts, where it stops). A length-delimited value is ``data[start:stop]``; the others are
    skipped by their width. Indices into one ``bytes``, no copies: the gate reads thousands of
    series a request."""
    key = data[pos]
    if key < 0x80:
        pos += 1
    else:
        key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise WireError(f"{what}: field number 0")
    if wire == 2:
        if pos >= end:
            raise WireError(f"{what}: a length runs past the end")
        length = data[pos]
        if length < 0x80:
            pos += 1
        else:
            length, pos = _varint(data, pos)
        stop = pos + length
    elif wire == 0:
        _, stop = _varint(data, pos)
    elif wire == 1:
        stop = pos + 8
    elif wire == 5:
        stop = pos + 4
    else:
        raise WireError(f"{what}: wire type {wire} (groups are not part of remote write)")
    if stop > end:
        raise WireError(f"{what}: a field of {stop - pos} bytes runs past the end")
    return number, wire, pos, stop


_SMALL_LENGTHS = [bytes((n,)) for n in range(128)]


def _delimited(key: bytes, payload: bytes) -> bytes:
    """One length-delimited field: its key byte, the payload's length, the payload."""
    n = len(payload)
    if n < 128:
        return key + _SMALL_LENGTHS[n] + payload
    length = bytearray()
    _put_varint(length, n)
    return key + bytes(length) + payload


@dataclass
class Series:
    """One TimeSeries: its labels decoded, its samples kept as their encoded fields."""

    labels: dict[str, str]
    samples: list[bytes]
    """Each Sample message's bytes, as received."""

    @property
    def name(self) -> str:
        return self.labels.get("__name__", "")


def _label(data: bytes, pos: int, end: int, limits: Limits) -> tuple[str, str]:
    name = value = b""
    while pos < end:
        number, wire, start, stop = _next_field(data, pos, end, "label")
        pos = stop
        if wire == 2 and number == 1:
            name = data[start:stop]
        elif wire == 2 and number == 2:
            value = data[start:stop]
        # any other field: ignored, as protobuf readers do
    if not name or len(name) > limits.max_name_bytes:
        raise WireError(f"a label name is empty or over {limits.max_name_bytes} bytes")
    if len(value) > limits.max_value_bytes:
        raise WireError(f"label {name[:64]!r}'s value is over {limits.max_value_bytes} bytes")
    try:
        return name.decode(), value.decode()
    except UnicodeDecodeError as err:
        raise WireError(f"a label of {name[:64]!r} is not UTF-8") from err


def _series(data: bytes, pos: int, end: int, limits: Limits) -> Series:
    labels: dict[str, str] = {}
    samples: list[bytes] = []
    while pos < end:
        number, wire, start, stop = _next_field(data, pos, end, "TimeSeries")
        pos = stop
        if wire != 2:
            continue
        if number == 1:
            if len(labels) >= limits.max_labels:
                raise WireError(f"a series has over {limits.max_labels} labels")
            name, value = _label(data, start, stop, limits)
            if name in labels:
                raise WireError(f"a series carries label {name!r} twice")
            labels[name] = value
        elif number == 2:
            samples.append(data[start:stop])
    return Series(labels, samples)


def read_write_request(data: bytes, limits: Limits) -> list[Series]:
    """The series of a WriteRequest (metadata, exemplars and histograms are left out: the gate
    forwards samples alone)."""
    found: list[Series] = []
    pos, end = 0, len(data)
    while pos < end:
        number, wire, start, stop = _next_field(data, pos, end, "WriteRequest")
        pos = stop
        if number != 1 or wire != 2:
            continue
        if len(found) >= limits.max_series:
            raise WireError(f"over {limits.max_series} series in one request")
        found.append(_series(data, start, stop, limits))
    return found


def write_request(series: list[Series]) -> bytes:
    """The WriteRequest holding ``series``, each one's labels sorted by name as the remote-write
    specification requires."""
    parts = []
    for one in series:
        labels = one.labels
        body = [
            _delimited(
                b"\x0a", _delimited(b"\x0a", name.encode()) + _delimited(b"\x12", labels[name].encode())
            )
            for name in sorted(labels)
        ]
        body += [_delimited(b"\x12", sample) for sample in one.samples]
        parts.append(_delimited(b"\x0a", b"".join(body)))
    return b"".join(parts)


def sample(value: float, timestamp_ms: int) -> bytes:
    """One Sample message (``double value = 1; int64 timestamp = 2``): for tests and probes."""
    import struct

    out = bytearray(b"\x09" + struct.pack("<d", value))
    _put_varint(out, 2 << 3)
    _put_varint(out, timestamp_ms & 0xFFFFFFFFFFFFFFFF)
    return bytes(out)

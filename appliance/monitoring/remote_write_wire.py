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


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
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


def _fields(data: bytes | memoryview, what: str) -> list[tuple[int, int, bytes | memoryview | int]]:
    """(field number, wire type, value) of each field of one message: a length-delimited value as
    a view of its bytes, fixed-width ones as their raw bytes, varints as ints."""
    found: list[tuple[int, int, bytes | memoryview | int]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"{what}: field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
            found.append((number, wire, value))
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise WireError(f"{what}: a fixed-width field runs past the end")
            found.append((number, wire, data[pos : pos + width]))
            pos += width
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise WireError(f"{what}: a field of {length} bytes runs past the end")
            found.append((number, wire, data[pos : pos + length]))
            pos += length
        else:
            raise WireError(f"{what}: wire type {wire} (groups are not part of remote write)")
    return found


def _put_bytes(out: bytearray, number: int, value: bytes | bytearray | memoryview) -> None:
    _put_varint(out, number << 3 | 2)
    _put_varint(out, len(value))
    out += value


@dataclass
class Series:
    """One TimeSeries: its labels decoded, its samples kept as their encoded fields."""

    labels: dict[str, str]
    samples: list[bytes]
    """Each Sample message's bytes, as received."""

    @property
    def name(self) -> str:
        return self.labels.get("__name__", "")


def _label(data: memoryview, limits: Limits) -> tuple[str, str]:
    name = value = b""
    for number, wire, raw in _fields(data, "label"):
        if wire != 2 or number not in (1, 2):
            continue  # an unknown field: ignored, as protobuf readers do
        if number == 1:
            name = bytes(raw)
        else:
            value = bytes(raw)
    if not name or len(name) > limits.max_name_bytes:
        raise WireError(f"a label name is empty or over {limits.max_name_bytes} bytes")
    if len(value) > limits.max_value_bytes:
        raise WireError(f"label {name[:64]!r}'s value is over {limits.max_value_bytes} bytes")
    try:
        return name.decode(), value.decode()
    except UnicodeDecodeError as err:
        raise WireError(f"a label of {name[:64]!r} is not UTF-8") from err


def read_write_request(data: bytes, limits: Limits) -> list[Series]:
    """The series of a WriteRequest (metadata, exemplars and histograms are left out: the gate
    forwards samples alone)."""
    view = memoryview(data)
    found: list[Series] = []
    for number, wire, raw in _fields(view, "WriteRequest"):
        if number != 1 or wire != 2:
            continue
        if len(found) >= limits.max_series:
            raise WireError(f"over {limits.max_series} series in one request")
        labels: dict[str, str] = {}
        samples: list[bytes] = []
        for field, kind, part in _fields(raw, "TimeSeries"):  # type: ignore[arg-type]
            if kind != 2:
                continue
            if field == 1:
                if len(labels) >= limits.max_labels:
                    raise WireError(f"a series has over {limits.max_labels} labels")
                name, value = _label(part, limits)  # type: ignore[arg-type]
                if name in labels:
                    raise WireError(f"a series carries label {name!r} twice")
                labels[name] = value
            elif field == 2:
                samples.append(bytes(part))
        found.append(Series(labels, samples))
    return found


def write_request(series: list[Series]) -> bytes:
    """The WriteRequest holding ``series``, each one's labels sorted by name as the remote-write
    specification requires."""
    out = bytearray()
    for one in series:
        body = bytearray()
        for name in sorted(one.labels):
            label = bytearray()
            _put_bytes(label, 1, name.encode())
            _put_bytes(label, 2, one.labels[name].encode())
            _put_bytes(body, 1, label)
        for sample in one.samples:
            _put_bytes(body, 2, sample)
        _put_bytes(out, 1, body)
    return bytes(out)


def sample(value: float, timestamp_ms: int) -> bytes:
    """One Sample message (``double value = 1; int64 timestamp = 2``): for tests and probes."""
    import struct

    out = bytearray(b"\x09" + struct.pack("<d", value))
    _put_varint(out, 2 << 3)
    _put_varint(out, timestamp_ms & 0xFFFFFFFFFFFFFFFF)
    return bytes(out)

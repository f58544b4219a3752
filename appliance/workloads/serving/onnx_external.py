"""The external data files an ONNX model names, read from its protobuf without the ``onnx`` package.

A model over protobuf's 2 GiB cap, or one saved by MLflow's ``onnx.log_model`` with its defaults,
keeps tensors in files beside ``model.onnx`` (``TensorProto.external_data``, key ``location``,
relative to the model's folder). A source that fetches single objects (S3) must fetch those too.
The model server installs ONNX Runtime, not ``onnx``: this reads the few fields it needs from the
wire format and skips the rest by their lengths, so a large model without external data costs one
pass over its field headers (the file is mapped, not read into memory).

Every location must be a relative path inside the model's folder (ONNX Runtime refuses the others
too): one that is not is named in a ValueError before anything is fetched.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

MAX_LOCATIONS = 10_000
"""More distinct files than any real model splits its tensors into (``onnx`` writes one per
tensor at most)."""

# Field numbers in onnx.proto3, for the messages that can hold a tensor.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODES, _GRAPH_INITIALIZERS, _GRAPH_SPARSE = 1, 5, 15
_FUNCTION_NODES = 7
_NODE_ATTRIBUTES = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1
_MAX_NESTING = 64
"""Subgraphs within subgraphs (If, Loop, Scan): far deeper than any model; a file nesting deeper is
not read as one."""


def external_locations(model: Path) -> list[str]:
    """The distinct ``location`` of every tensor stored outside ``model``, in first-seen order."""
    if model.stat().st_size == 0:
        return []
    with model.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            found: dict[str, None] = {}
            for location in _model(view):
                found[_checked(location, model)] = None
                if len(found) > MAX_LOCATIONS:
                    raise ValueError(f"{model} names over {MAX_LOCATIONS} external data files")
            return list(found)
        finally:
            view.release()


def _checked(location: str, model: Path) -> str:
    path = PurePosixPath(location)
    if not location or path.is_absolute() or "\\" in location or ".." in path.parts:
        raise ValueError(
            f"{model} keeps a tensor in {location!r}, which is not a file beside the model: "
            "save it with external data in its own folder (onnx.save_model(..., location='NAME'))"
        )
    return str(path)


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | int | None]]:
    """(field number, payload) of one message: the bytes of a length-delimited field, the value
    of a varint, None for a fixed-size number."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError("not an ONNX model: a field runs past the end of the file")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            yield number, None
        else:
            raise ValueError(f"not an ONNX model: wire type {wire} in field {number}")
    if pos > end:
        raise ValueError("not an ONNX model: a field runs past the end of the file")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("not an ONNX model: a number runs past the end of the file")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _messages(data: memoryview, *wanted: int) -> Iterator[tuple[int, memoryview]]:
    """(field number, bytes) of each length-delimited field of ``data`` numbered in ``wanted``."""
    for number, payload in _fields(data):
        if number in wanted and isinstance(payload, memoryview):
            yield number, payload


def _model(data: memoryview) -> Iterator[str]:
    for number, body in _messages(data, _MODEL_GRAPH, _MODEL_FUNCTIONS):
        if number == _MODEL_GRAPH:
            yield from _graph(body, 0)
        else:
            for _, node in _messages(body, _FUNCTION_NODES):
                yield from _attributes(node, 0)


def _graph(data: memoryview, depth: int) -> Iterator[str]:
    if depth > _MAX_NESTING:
        raise ValueError(f"not an ONNX model: subgraphs nested over {_MAX_NESTING} deep")
    for number, body in _messages(data, _GRAPH_INITIALIZERS, _GRAPH_SPARSE, _GRAPH_NODES):
        if number == _GRAPH_INITIALIZERS:
            yield from _tensor(body)
        elif number == _GRAPH_SPARSE:
            yield from _sparse(body)
        else:
            yield from _attributes(body, depth)


def _attributes(node: memoryview, depth: int) -> Iterator[str]:
    for _, attribute in _messages(node, _NODE_ATTRIBUTES):
        kinds = (_ATTR_TENSOR, _ATTR_TENSORS, _ATTR_SPARSE, _ATTR_SPARSES, _ATTR_GRAPH, _ATTR_GRAPHS)
        for field, body in _messages(attribute, *kinds):
            if field in (_ATTR_TENSOR, _ATTR_TENSORS):
                yield from _tensor(body)
            elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
                yield from _sparse(body)
            else:
                yield from _graph(body, depth + 1)


def _sparse(data: memoryview) -> Iterator[str]:
    for _, body in _messages(data, _SPARSE_VALUES, _SPARSE_INDICES):
        yield from _tensor(body)


def _tensor(data: memoryview) -> Iterator[str]:
    external, location = False, None
    for number, payload in _fields(data):
        if number == _TENSOR_DATA_LOCATION and isinstance(payload, int):
            external = payload == _EXTERNAL  # the last one counts, as protobuf reads repeats
        elif number == _TENSOR_EXTERNAL_DATA and isinstance(payload, memoryview):
            entry = {
                n: bytes(v).decode("utf-8", errors="replace")
                for n, v in _messages(payload, _ENTRY_KEY, _ENTRY_VALUE)
            }
            if entry.get(_ENTRY_KEY) == "location":
                location = entry.get(_ENTRY_VALUE, "")
    if external:
        if location is None:
            raise ValueError("not an ONNX model: a tensor stored outside it names no location")
        yield location

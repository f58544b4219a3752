"""The REST inference body: JSON tensors and the binary tensor data extension.

A request is a JSON header, optionally followed by raw tensor bytes: the header's length is the
``Inference-Header-Content-Length`` HTTP header, and each input whose parameters carry
``binary_data_size`` takes its bytes from the tail in input order. Outputs go back as JSON
``data`` or, when asked (``binary_data_output`` for all, ``binary_data`` per output), as raw bytes
after the JSON header the same way. With Triton's shared-memory extension a tensor's
parameters name a registered region instead (``shared_memory.py``): an input is read from it, an
output written to it and sent back with no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from appliance.workloads.serving.errors import BadRequest
from appliance.workloads.serving.shared_memory import NO_REGIONS, CallerRegions, Target, tensor_ref
from appliance.workloads.serving.tensors import (
    check_shape,
    datatype_of,
    from_json_data,
    from_raw,
    to_json_list,
    to_raw,
)


@dataclass
class RestInfer:
    """A decoded inference request."""

    id: str | None
    arrays: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[str] | None  # None: every output
    binary: dict[str, bool]  # output name -> send as raw bytes
    binary_default: bool
    shm_outputs: dict[str, Target]  # output name -> where in shared memory to write it


def decode(body: bytes, header_length: int | None, shm: CallerRegions = NO_REGIONS) -> RestInfer:
    """Parse and check an infer request body; every problem is a 400 naming the field."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
        )
    head = body if header_length is None else body[:header_length]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"malformed JSON in request body: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    tail = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"inputs[{i}] needs a 'name' string")
        if name in arrays:
            raise BadRequest(f"input '{name}' is given twice")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise BadRequest(f"input '{name}' needs a 'datatype' string")
        shape = check_shape(tensor.get("shape"), name)
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"input '{name}': parameters must be an object")
        size = params.get("binary_data_size")
        ref = tensor_ref(params, name)
        if ref is not None:
            if size is not None or "data" in tensor:
                raise BadRequest(f"input '{name}' is in shared memory: give no 'data' or binary_data_size")
            arrays[name] = shm.read(ref, datatype, shape, name)
        elif size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise BadRequest(
                    f"input '{name}': binary_data_size {size!r} runs past the {len(tail)} binary bytes sent"
                )
            arrays[name] = from_raw(tail[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in tensor:
            arrays[name] = from_json_data(tensor["data"], datatype, shape, name)
        else:
            raise BadRequest(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
        datatypes[name] = datatype
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} binary bytes follow the JSON header that no input claims")
    params = doc.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs, binary, shm_outputs = _requested(doc.get("outputs"), shm)
    rid = doc.get("id")
    return RestInfer(
        str(rid) if rid is not None else None,
        arrays,
        datatypes,
        outputs,
        binary,
        binary_default,
        shm_outputs,
    )


def _requested(spec: Any, shm: CallerRegions) -> tuple[list[str] | None, dict[str, bool], dict[str, Target]]:
    if spec is None:
        return None, {}, {}
    if not isinstance(spec, list):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
    names, binary, in_shm = [], {}, {}
    for i, out in enumerate(spec):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise BadRequest(f"outputs[{i}] needs a 'name' string")
        name = out["name"]
        names.append(name)
        params = out.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"output '{name}': parameters must be an object")
        if "binary_data" in params:
            binary[name] = bool(params["binary_data"])
        ref = tensor_ref(params, name)
        if ref is not None:
            in_shm[name] = shm.resolve(ref, name)  # before the model runs, not after
    return names, binary, in_shm


def encode(
    model_name: str,
    version: str,
    req: RestInfer,
    names: list[str],
    arrays: list[np.ndarray],
) -> tuple[bytes, int | None]:
    """Response body and, when raw tensors follow the JSON, the JSON header's length."""
    outputs = []
    blobs: list[bytes] = []
    for name, array in zip(names, arrays, strict=True):
        out: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        target = req.shm_outputs.get(name)
        if target is not None:
            raw = to_raw(array)
            # no data and no parameters, as Triton answers: its C++ client wants binary_data_size
            # in any parameters it finds
            target.write(raw, name)
        elif req.binary.get(name, req.binary_default):
            raw = to_raw(array)
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = to_json_list(array, name)
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if req.id is not None:
        doc["id"] = req.id
    head = orjson.dumps(doc)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)

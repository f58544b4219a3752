"""Tensor decoding/encoding rules shared by REST and gRPC: datatypes, shapes, binary extension."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from appliance.workloads.serving import rest_codec
from appliance.workloads.serving.errors import BadRequest
from appliance.workloads.serving.tensors import (
    from_json_data,
    from_raw,
    pack_bytes,
    to_json_list,
    unpack_bytes,
)


def test_nested_and_flat_json_give_the_same_array() -> None:
    nested = from_json_data([[1, 2, 3], [4, 5, 6]], "INT32", (2, 3), "x")
    flat = from_json_data([1, 2, 3, 4, 5, 6], "INT32", (2, 3), "x")
    assert nested.dtype == np.int32 and np.array_equal(nested, flat)


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "needle"),
    [
        ([1, 2], "FP32", (3,), "needs 3 values, data has 2"),
        ([[1, 2], [3]], "FP32", (2, 2), "ragged"),
        (["a", "b"], "FP32", (2,), "not a valid FP32"),
        ("abc", "FP32", (3,), "must be a list"),
        ([1, 2], "BF16", (2,), "unsupported datatype 'BF16'"),
        ([1, 2], "INT9", (2,), "unsupported datatype"),
        ([1, 2], "BYTES", (2,), "BYTES data must be strings"),
        ([300], "UINT8", (1,), "not a valid UINT8"),
    ],
)
def test_json_data_errors_name_the_input(data, datatype, shape, needle) -> None:
    with pytest.raises(BadRequest, match="input 'x'") as err:
        from_json_data(data, datatype, shape, "x")
    assert needle in err.value.message


def test_raw_round_trip_and_size_check() -> None:
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    assert np.array_equal(from_raw(a.tobytes(), "FP16", (2, 3), "x"), a)
    with pytest.raises(BadRequest, match="needs 12 bytes, got 10"):
        from_raw(a.tobytes()[:10], "FP16", (2, 3), "x")


def test_bytes_packing() -> None:
    raw = pack_bytes([b"a", "b\u00e9", b""])
    assert unpack_bytes(raw, "x") == [b"a", "b\u00e9".encode(), b""]
    with pytest.raises(BadRequest, match="runs past"):
        unpack_bytes(raw[:-5], "x")
    with pytest.raises(BadRequest, match="truncated"):
        unpack_bytes(b"\x01\x00", "x")
    assert to_json_list(np.array([b"a", "b"], dtype=object)) == ["a", "b"]
    with pytest.raises(BadRequest, match="binary_data_output"):
        to_json_list(np.array([b"\xff"], dtype=object))


def test_binary_extension_request_and_response() -> None:
    a = np.array([[1.0, 2.0]], np.float32)
    head = json.dumps(
        {
            "id": "7",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hi"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        }
    ).encode()
    req = rest_codec.decode(head + a.tobytes(), len(head))
    assert np.array_equal(req.arrays["a"], a) and req.arrays["s"].tolist() == [b"hi"]
    assert req.outputs == ["y", "z"] and req.binary == {"y": True} and req.id == "7"
    body, json_len = rest_codec.encode("m", "1", req, ["y", "z"], [a, np.array([3], np.int64)])
    assert json_len is not None
    doc = json.loads(body[:json_len])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert doc["outputs"][1]["data"] == [3] and doc["id"] == "7"
    assert body[json_len:] == a.tobytes()


def test_json_only_response_has_no_header_length() -> None:
    req = rest_codec.decode(
        b'{"inputs":[{"name":"a","datatype":"BOOL","shape":[2],"data":[true,false]}]}', None
    )
    body, json_len = rest_codec.encode("m", "1", req, ["a"], [req.arrays["a"]])
    assert json_len is None
    assert json.loads(body)["outputs"][0] == {
        "name": "a",
        "datatype": "BOOL",
        "shape": [2],
        "data": [True, False],
    }


@pytest.mark.parametrize(
    ("body", "length", "needle"),
    [
        (b"[]", None, "JSON object"),
        (b'{"inputs": {}}', None, "non-empty 'inputs'"),
        (b'{"inputs": [1]}', None, "inputs[0] must be an object"),
        (b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}', None, "needs a 'name'"),
        (b'{"inputs": [{"name": "a", "shape": [1], "data": [1]}]}', None, "needs a 'datatype'"),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": {}}',
            None,
            "'outputs'",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], '
            b'"parameters": {"binary_data_size": 4}}]}',
            None,
            "runs past",
        ),
    ],
)
def test_request_errors(body: bytes, length: int | None, needle: str) -> None:
    with pytest.raises(BadRequest) as err:
        rest_codec.decode(body, length)
    assert needle in err.value.message


def test_binary_bytes_tensor() -> None:
    raw = struct.pack("<I", 2) + b"ok"
    head = json.dumps(
        {
            "inputs": [
                {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    ).encode()
    assert rest_codec.decode(head + raw, len(head)).arrays["s"].tolist() == [b"ok"]

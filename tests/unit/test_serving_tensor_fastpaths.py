"""The decoding fast paths for image-sized tensors give what the generic paths gave, and leave
every malformed request to the same 400 as before: gRPC typed FP32/FP64 contents read from their
wire bytes, flat JSON float lists through np.fromiter, raw bytes (gRPC and REST binary)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb  # the upstream stub, as the other unit tests load it

from appliance.workloads.serving import rest_codec
from appliance.workloads.serving.errors import BadRequest
from appliance.workloads.serving.grpc_codec import _packed_fixed, decode_inputs, encode_outputs
from appliance.workloads.serving.tensors import from_json_data

SHAPE = [1, 3, 64, 64]
IMAGE = np.random.default_rng(7).normal(size=SHAPE).astype(np.float32)


def _typed(datatype: str, shape: list[int], field: str, values: list, **extra: list) -> pb.ModelInferRequest:
    """A request as a client sends it: built, serialized and parsed again (as the server gets it)."""
    req = pb.ModelInferRequest(model_name="cnn")
    tensor = req.inputs.add(name="input", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    for other, more in extra.items():
        getattr(tensor.contents, other).extend(more)
    return pb.ModelInferRequest.FromString(req.SerializeToString())


@pytest.mark.parametrize(
    ("datatype", "field", "dtype"),
    [("FP32", "fp32_contents", np.float32), ("FP64", "fp64_contents", np.float64)],
)
def test_typed_float_contents_decode_exactly_from_the_wire(datatype: str, field: str, dtype: type) -> None:
    image = IMAGE.astype(dtype)
    req = _typed(datatype, SHAPE, field, image.ravel().tolist())
    assert _packed_fixed(req.inputs[0].contents, datatype) is not None  # the fast path took it
    arrays, datatypes = decode_inputs(req)
    assert datatypes == {"input": datatype}
    assert arrays["input"].dtype == dtype and arrays["input"].shape == tuple(SHAPE)
    assert np.array_equal(arrays["input"], image)


def test_typed_contents_with_too_few_values_is_a_400_naming_the_counts() -> None:
    req = _typed("FP32", SHAPE, "fp32_contents", IMAGE.ravel()[:-1].tolist())
    with pytest.raises(BadRequest, match=r"needs 12288 values, contents.fp32_contents has 12287"):
        decode_inputs(req)


def test_values_in_the_field_of_another_datatype_are_refused() -> None:
    # FP64 declared, FP32 values sent: the FP64 field is empty, as the generic path found too
    req = _typed("FP64", [4], "fp32_contents", [1.0, 2.0, 3.0, 4.0])
    assert _packed_fixed(req.inputs[0].contents, "FP64") is None
    with pytest.raises(BadRequest, match=r"needs 4 values, contents.fp64_contents has 0"):
        decode_inputs(req)


def test_a_second_filled_field_falls_back_to_the_generic_path() -> None:
    req = _typed("FP32", [3], "fp32_contents", [1.5, 2.5, 3.5], int_contents=[7, 8])
    assert _packed_fixed(req.inputs[0].contents, "FP32") is None
    arrays, _ = decode_inputs(req)
    assert arrays["input"].tolist() == [1.5, 2.5, 3.5]


def test_empty_typed_contents_for_an_empty_shape() -> None:
    arrays, _ = decode_inputs(_typed("FP32", [0, 3], "fp32_contents", []))
    assert arrays["input"].shape == (0, 3)


def test_integer_contents_keep_the_generic_path() -> None:
    req = _typed("INT32", [2, 2], "int_contents", [1, -2, 300000, 4])
    assert _packed_fixed(req.inputs[0].contents, "INT32") is None
    arrays, _ = decode_inputs(req)
    assert arrays["input"].dtype == np.int32 and arrays["input"].tolist() == [[1, -2], [300000, 4]]


def test_raw_contents_of_the_wrong_byte_length_is_a_400() -> None:
    req = pb.ModelInferRequest(model_name="cnn")
    req.inputs.add(name="input", datatype="FP32", shape=SHAPE)
    req.raw_input_contents.append(IMAGE.tobytes()[:-2])
    with pytest.raises(BadRequest, match=r"needs 49152 bytes, got 49150"):
        decode_inputs(req)


def test_flat_json_floats_match_numpys_own_conversion() -> None:
    data = IMAGE.ravel().tolist()
    array = from_json_data(data, "FP32", tuple(SHAPE), "input")
    assert array.dtype == np.float32 and np.array_equal(array, IMAGE)
    mixed = from_json_data([1, True, 2.5, 0], "FP64", (2, 2), "x")
    assert mixed.tolist() == [[1.0, 1.0], [2.5, 0.0]]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([1.0, [2.0]], "ragged"),
        ([1.0, "a"], "not a valid FP32"),
        ([1.0, None], "NaN, infinity or a value out of FP32"),
        ([1e39, 1.0], "NaN, infinity or a value out of FP32"),
        ([1.0, 2.0, 3.0], "needs 2 values, data has 3"),
    ],
)
def test_flat_json_floats_bad_input_keeps_its_message(data: list, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle), np.errstate(over="ignore"):
        from_json_data(data, "FP32", (2,), "x")


def test_rest_binary_image_and_its_malformed_twins() -> None:
    def body(shape: list[int], datatype: str, raw: bytes) -> tuple[bytes, int]:
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": shape,
                        "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        return head + raw, len(head)

    ok = rest_codec.decode(*body(SHAPE, "FP32", IMAGE.tobytes()))
    assert np.array_equal(ok.arrays["input"], IMAGE)
    with pytest.raises(BadRequest, match=r"needs 49152 bytes, got 49148"):
        rest_codec.decode(*body(SHAPE, "FP32", IMAGE.tobytes()[:-4]))
    with pytest.raises(BadRequest, match=r"FP64 needs 98304 bytes, got 49152"):
        rest_codec.decode(*body(SHAPE, "FP64", IMAGE.tobytes()))
    with pytest.raises(BadRequest, match=r"shape \[1, 3, 64, 63\] of FP32 needs 48384 bytes"):
        rest_codec.decode(*body([1, 3, 64, 63], "FP32", IMAGE.tobytes()))
    with pytest.raises(BadRequest, match=r"unsupported datatype 'BF16'"):
        rest_codec.decode(*body(SHAPE, "BF16", IMAGE.tobytes()))


@pytest.mark.parametrize("size", [0, 1, 10, 12288, 2_000_000])
@pytest.mark.parametrize(("dtype", "field"), [(np.float32, "fp32_contents"), (np.float64, "fp64_contents")])
def test_typed_float_outputs_are_the_bytes_extend_would_have_written(
    size: int, dtype: type, field: str
) -> None:
    array = np.random.default_rng(size).normal(size=(1, size)).astype(dtype)
    fast = pb.ModelInferResponse()
    encode_outputs(fast, ["out"], [array], raw=False)
    slow = pb.ModelInferResponse()
    out = slow.outputs.add(name="out", datatype=fast.outputs[0].datatype, shape=[1, size])
    getattr(out.contents, field).extend(array.ravel().tolist())
    assert fast.SerializeToString() == slow.SerializeToString()
    parsed = pb.ModelInferResponse.FromString(fast.SerializeToString())
    assert np.array_equal(np.array(getattr(parsed.outputs[0].contents, field), dtype), array.ravel())


def test_a_non_contiguous_float_output_is_encoded_in_row_major_order() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T  # a transposed view
    response = pb.ModelInferResponse()
    encode_outputs(response, ["out"], [array], raw=False)
    assert list(response.outputs[0].contents.fp32_contents) == array.ravel().tolist()
    assert list(response.outputs[0].shape) == [4, 3]


def test_every_output_of_a_typed_request_stays_typed() -> None:
    first = np.array([[0.25, 0.75]], np.float32)
    second = np.array([[1.5]], np.float64)
    third = np.array([[3]], np.int64)
    response = pb.ModelInferResponse()
    encode_outputs(response, ["a", "b", "c"], [first, second, third], raw=False)
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == [0.25, 0.75]
    assert list(response.outputs[1].contents.fp64_contents) == [1.5]
    assert list(response.outputs[2].contents.int64_contents) == [3]

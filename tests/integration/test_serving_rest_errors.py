"""Bad input on the REST front end: every case gets its 4xx naming the problem, and the server
keeps serving afterwards."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest

from tests.integration._serving_fixtures import (
    TOKEN,
    ServerProcess,
    infer_body,
    rest_client,
    rest_models,
    rest_server,
)

pytestmark = pytest.mark.integration
__all__ = ["rest_client", "rest_models", "rest_server"]  # fixtures: client, models, server

GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}
BAD_CASES = [
    ("POST", "/v2/models/nope/infer", {"inputs": [GOOD]}, 404, "unknown model 'nope'"),
    ("POST", "/v2/models/mlp/versions/42/infer", {"inputs": [GOOD]}, 404, "no version '42'"),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "name": "x"}]}, 400, "no input 'x'"),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "datatype": "FP64"}]}, 400, "datatype FP64"),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "datatype": "BF16"}]}, 400, "unsupported datatype"),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"inputs": [{**GOOD, "shape": [1, 7], "data": [0.0] * 7}]},
        400,
        "shape [1, 7]",
    ),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "shape": [2, 8]}]}, 400, "needs 16 values"),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "shape": [8]}]}, 400, "shape [8]"),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "shape": "1,8"}]}, 400, "shape must be"),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"inputs": [{**GOOD, "data": [[0.0] * 8, [1.0]]}]},
        400,
        "input 'input'",
    ),
    ("POST", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "data": ["a"] * 8}]}, 400, "not a valid FP32"),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"inputs": [{k: v for k, v in GOOD.items() if k != "data"}]},
        400,
        "neither 'data'",
    ),
    ("POST", "/v2/models/mlp/infer", {"inputs": []}, 400, "non-empty 'inputs'"),
    ("POST", "/v2/models/mlp/infer", [1, 2], 400, "JSON object"),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"inputs": [GOOD], "outputs": [{"name": "logits"}]},
        400,
        "no output 'logits'",
    ),
    ("POST", "/v2/models/mlp/infer", {"inputs": [GOOD, GOOD]}, 400, "given twice"),
    ("GET", "/v2/models/mlp/infer", None, 405, "not allowed"),
    ("GET", "/v2/models/nope", None, 404, "unknown model"),
    ("GET", "/v2/nothing/here", None, 404, "no route"),
    ("GET", "/metrics", None, 404, "under /v2"),
    ("POST", "/v2/repository/models/nope/unload", None, 403, "use the admin token"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"), BAD_CASES, ids=[c[4] for c in BAD_CASES]
)
def test_bad_input_gets_a_4xx_naming_the_problem(
    client: httpx.Client, method, path, body, status, needle
) -> None:
    r = client.request(method, path, json=body) if body is not None else client.request(method, path)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert client.post("/v2/models/mlp/infer", json={"inputs": [GOOD]}).status_code == 200


@pytest.mark.parametrize(
    ("content", "headers", "needle"),
    [
        (b"{not json", {}, "malformed JSON"),
        (b"", {}, "malformed JSON"),
        (
            json.dumps({"inputs": [GOOD]}).encode() + b"xx",
            {"Inference-Header-Content-Length": str(len(json.dumps({"inputs": [GOOD]})))},
            "2 binary bytes",
        ),
        (b"{}", {"Inference-Header-Content-Length": "99"}, "outside the body"),
        (b"{}", {"Inference-Header-Content-Length": "x"}, "must be an integer"),
        (b"not gzip", {"Content-Encoding": "gzip"}, "not valid gzip"),
    ],
)
def test_malformed_bodies(client: httpx.Client, content: bytes, headers: dict, needle: str) -> None:
    r = client.post("/v2/models/mlp/infer", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_binary_size_past_the_body(client: httpx.Client) -> None:
    head = json.dumps(
        {
            "inputs": [
                {**{k: v for k, v in GOOD.items() if k != "data"}, "parameters": {"binary_data_size": 32}}
            ]
        }
    ).encode()
    r = client.post(
        "/v2/models/mlp/infer",
        content=head + b"\0" * 16,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "runs past" in r.json()["error"]
    r = client.post(
        "/v2/models/mlp/infer",
        content=head + b"\0" * 32,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200


def test_oversized_body_is_413_and_the_server_keeps_serving(client: httpx.Client) -> None:
    x = np.zeros((20000, 8), np.float32)
    r = client.post("/v2/models/mlp/infer", json=infer_body(x))
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    assert client.post("/v2/models/mlp/infer", json={"inputs": [GOOD]}).status_code == 200


def test_malformed_http_and_pipelining(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
    body = json.dumps({"inputs": [GOOD]}).encode()
    one = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(one + live + one)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    parts = data.split(b"HTTP/1.1 200 OK")
    assert b"probabilities" in parts[1] and b'"live"' in parts[2] and b"probabilities" in parts[3]


def test_expect_100_continue_is_answered(server: ServerProcess) -> None:
    body = json.dumps({"inputs": [GOOD]}).encode()
    head = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as s:
        s.sendall(head)
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")


def test_a_request_with_no_rows_is_400_and_metrics_keep_scraping(
    client: httpx.Client, server: ServerProcess
) -> None:
    r = client.post("/v2/models/mlp/infer", json={"inputs": [{**GOOD, "shape": [0, 8], "data": []}]})
    assert r.status_code == 400 and "holds no values" in r.json()["error"]
    scrape = httpx.get(server.metrics_url, timeout=10)
    assert scrape.status_code == 200 and "appliance_drift_window_rows" in scrape.text
    assert client.post("/v2/models/mlp/infer", json={"inputs": [GOOD]}).status_code == 200
    assert httpx.get(server.metrics_url, timeout=10).status_code == 200


@pytest.mark.parametrize("value", [1e39, -1e39, "nan", "inf", "-Infinity"])
def test_non_finite_or_out_of_range_floats_are_400_naming_the_input(
    client: httpx.Client, value: object
) -> None:
    data = [0.0] * 7 + [value]
    r = client.post("/v2/models/mlp/infer", json={"inputs": [{**GOOD, "data": data}]})
    assert r.status_code == 400, r.text
    assert "input 'input'" in r.json()["error"] and "NaN, infinity" in r.json()["error"]
    assert client.post("/v2/models/mlp/infer", json={"inputs": [GOOD]}).status_code == 200


def test_a_non_finite_output_is_never_a_json_null(client: httpx.Client) -> None:
    """NaN and infinity sent as raw bytes reach the echo model; asked back as JSON they are
    refused naming the output, asked back as binary they come back bit for bit."""
    raw = np.array([[np.nan, np.inf]], np.float32).tobytes()
    others = {"FP16": 0.0, "FP64": 0.0, "INT64": 0, "INT32": 0, "INT8": 0, "UINT8": 0, "BOOL": False}
    inputs: list[dict] = [
        {"name": "in_fp32", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
        {"name": "in_bytes", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]},
    ]
    inputs += [
        {"name": f"in_{dt.lower()}", "datatype": dt, "shape": [1, 2], "data": [v, v]}
        for dt, v in others.items()
    ]

    def send(binary_out: bool) -> httpx.Response:
        head = json.dumps(
            {"inputs": inputs, "outputs": [{"name": "out_fp32", "parameters": {"binary_data": binary_out}}]}
        ).encode()
        return client.post(
            "/v2/models/echo/infer",
            content=head + raw,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )

    r = send(False)
    assert r.status_code == 400, r.text
    assert "output 'out_fp32'" in r.json()["error"] and b"null" not in r.content
    r = send(True)
    assert r.status_code == 200, r.text
    json_len = int(r.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(r.content[json_len:], np.float32), [np.nan, np.inf])

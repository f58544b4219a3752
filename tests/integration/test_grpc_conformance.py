"""The model server's gRPC port as a hostile client meets it: h2spec and the cheap attacks.

A real model server process (auth on, a short header timeout): h2spec's 146 HTTP/2 conformance
tests (nghttp2's own server passes 145), then what used to hurt: a call without a token sending
a large gzip body, a CONTINUATION flood, slowloris connections and streams past the advertised
limit. Each ends as grpc_h2's docstring says, and the server keeps answering normal calls.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests._h2client import (
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    H2Client,
    frame,
)
from tests.integration._h2spec import run_h2spec
from tests.integration._serving_fixtures import ServerProcess, start_server, training_data, write_mlp

pytestmark = pytest.mark.integration

TOKEN = "conformance-token"
INFER = "/inference.GRPCInferenceService/ModelInfer"
EXCEPTIONS: set[str] = set()
"""h2spec tests this server is allowed to fail (none; nghttp2 fails http2/5.1.1/2)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("models")
    write_mlp(models / "mlp")
    srv = start_server(
        ["--model", str(models / "mlp"), "--poll-seconds", "0", "--limit", "header_timeout_s=1"],
        tmp_path_factory.mktemp("logs"),
        env={"APPLIANCE_SERVING_TOKEN": TOKEN},
    )
    yield srv
    srv.stop()


def infer_request(rows: int = 2) -> pb.ModelInferRequest:
    x = training_data(rows, seed=3)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    return request


def assert_serving(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10
        )
    assert list(reply.outputs[0].shape) == [2, 3]


def unauthorized_count(server: ServerProcess) -> float:
    text = httpx.get(server.metrics_url, timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if "_total{" in line and 'protocol="grpc"' in line and 'outcome="unauthorized"' in line
    )


def test_h2spec_passes_every_test(server: ServerProcess, tmp_path: Path) -> None:
    result = run_h2spec(server.grpc_port, tmp_path / "h2spec.xml")
    unexpected = sorted(set(result.failed) - EXCEPTIONS)
    assert not unexpected, f"{result.summary}; failed: {unexpected}\n{result.output}"
    assert len(result.passed) >= 145, result.summary
    assert_serving(server)


def test_a_call_without_a_token_is_refused_before_its_gzip_body_is_sent(server: ServerProcess) -> None:
    before = unauthorized_count(server)
    body = gzip.compress(infer_request(200_000).SerializeToString())  # 6.4 MB of floats
    with H2Client(server.grpc_port) as client:
        sid = client.open_stream(client.request_headers(INFER, None, [("grpc-encoding", "gzip")]))
        code, message = client.grpc_status(sid)  # no DATA sent yet: decided from the headers
        assert code == grpc.StatusCode.UNAUTHENTICATED.value[0] and "Bearer" in message
        assert client.wait_for(RST_STREAM, sid).code == 0  # NO_ERROR: stop sending
        for i in range(0, len(body), 16384):  # a client that sends anyway: dropped, not inflated
            client.send(frame(DATA, 0, sid, body[i : i + 16384]))
    assert unauthorized_count(server) == before + 1
    assert_serving(server)


def test_a_continuation_flood_is_cut_short_and_the_loop_stays_free(server: ServerProcess) -> None:
    with H2Client(server.grpc_port) as client:
        block = client.encoder.encode(client.request_headers(INFER, TOKEN))
        started = time.monotonic()
        try:  # 100,000 empty CONTINUATION frames (900 KB); 144 KB of them used to stall 2 s
            client.send(frame(HEADERS, 0, 1, block) + frame(CONTINUATION, 0, 1) * 100_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert client.wait_for(GOAWAY).code == ENHANCE_YOUR_CALM
        assert time.monotonic() - started < 10
    t0 = time.monotonic()
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
    assert time.monotonic() - t0 < 5
    assert_serving(server)


def test_slowloris_connections_are_closed_after_the_header_timeout(server: ServerProcess) -> None:
    started = time.monotonic()
    clients = [H2Client(server.grpc_port, handshake=False) for _ in range(100)]
    for i, client in enumerate(clients):
        client.send(PREFACE[: 1 + i % 20])  # part of the preface, then nothing
    for client in clients:
        client.closed_within(10)  # TimeoutError if one is still open
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    assert elapsed < 1 + 5  # header_timeout_s=1 plus slack, not "for as long as they like"
    assert_serving(server)


def test_streams_past_the_advertised_limit_are_refused(server: ServerProcess) -> None:
    with H2Client(server.grpc_port) as client:
        headers = client.request_headers(INFER, TOKEN)
        ids = [client.open_stream(headers) for _ in range(129)]  # the default limit is 128
        assert client.wait_for(RST_STREAM, ids[-1]).code == REFUSED_STREAM
    assert_serving(server)

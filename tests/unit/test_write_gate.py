"""The write gate in front of the central Prometheus: its snappy and protobuf readers refuse what
is malformed or past a limit, a box's series leave it labelled with the box's own name (whatever
the box wrote), only the model server's series pass, and the server checks the account before
it reads a body. A real Prometheus behind it: ``tests/integration/test_edge_remote_write.py``."""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from appliance.monitoring.catalog import SERVING_METRICS, series_names
from appliance.monitoring.remote_write_wire import (
    Limits,
    Series,
    WireError,
    read_write_request,
    sample,
    snappy_decode,
    snappy_encode,
    write_request,
)
from appliance.monitoring.write_gate import GateServer, Upstream, password_digest, rewrite

ALLOWED = frozenset(series_names(SERVING_METRICS))
LIMITS = Limits()


def _series(families: frozenset[str]) -> set[str]:
    return series_names({name: SERVING_METRICS[name] for name in families})


def psi(model: str, **extra: str) -> Series:
    labels = {"__name__": "appliance_feature_psi", "model": model, "feature": "f0"} | extra
    return Series(labels, [sample(0.9, 1_700_000_000_000)])


# --- snappy ---


def test_snappy_reads_literals_and_overlapping_copies_of_every_width() -> None:
    # "abc" as a literal, then a 1-byte-offset copy of 9 bytes from 3 back (overlapping),
    # a 2-byte-offset copy of 3 bytes from 12 back, a 4-byte-offset copy of 2 bytes from 1 back
    block = bytes([17, (3 - 1) << 2]) + b"abc" + bytes([1 | (9 - 4) << 2, 3])
    block += bytes([2 | (3 - 1) << 2]) + (12).to_bytes(2, "little")
    block += bytes([3 | (2 - 1) << 2]) + (1).to_bytes(4, "little")
    assert snappy_decode(block, 1024) == b"abcabcabcabc" + b"abc" + b"cc"


@pytest.mark.parametrize("size", [0, 1, 59, 60, 61, 255, 256, 65536, 65537, 200_000])
def test_snappy_round_trips_what_the_gate_writes(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    assert snappy_decode(snappy_encode(data[:size]), 1 << 20) == data[:size]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\xff\xff\xff\xff\x0f", "over the limit"),  # declares 4 GiB
        (bytes([5, 1 | 0 << 2, 1]), "outside what was decoded"),  # a copy with nothing before it
        (bytes([4, 3 << 2]) + b"ab", "runs past the end"),  # a literal of 4 with 2 bytes
        (bytes([9, 1 << 2]) + b"ab", "not the 9 it declares"),
        (bytes([1, 1 << 2]) + b"ab", "more than the 1 bytes"),
        (b"\x80", "varint"),
    ],
)
def test_snappy_refuses_what_is_malformed_or_too_large(block: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        snappy_decode(block, 1 << 20)


# --- protobuf ---


def test_a_write_request_round_trips_with_its_labels_sorted_and_samples_as_sent() -> None:
    series = [psi("fraud", instance="box:8082"), Series({"__name__": "up", "job": "x"}, [])]
    again = read_write_request(write_request(series), LIMITS)
    assert [s.labels for s in again] == [s.labels for s in series]
    assert again[0].samples == series[0].samples
    encoded = write_request(again)
    assert write_request(read_write_request(encoded, LIMITS)) == encoded  # the same bytes again
    assert list(read_write_request(write_request([psi("z", a="1")]), LIMITS)[0].labels) == [
        "__name__",
        "a",
        "feature",
        "model",
    ]


@pytest.mark.parametrize(
    ("series", "limits", "message"),
    [
        ([psi("a"), psi("b"), psi("c")], Limits(max_series=2), "over 2 series"),
        ([psi("a", x="1", y="2")], Limits(max_labels=4), "over 4 labels"),
        ([psi("a" * 3000)], LIMITS, "over 2048 bytes"),
        ([Series({"n" * 200: "v"}, [])], LIMITS, "over 128 bytes"),
    ],
)
def test_a_write_request_past_a_limit_is_refused(series: list[Series], limits: Limits, message: str) -> None:
    with pytest.raises(WireError, match=message):
        read_write_request(write_request(series), limits)


def test_a_series_naming_a_label_twice_or_not_protobuf_is_refused() -> None:
    label = b"\x0a\x05model\x12\x01a"  # Label {name: "model", value: "a"}
    series = (b"\x0a" + bytes([len(label)]) + label) * 2
    with pytest.raises(WireError, match="label 'model' twice"):
        read_write_request(b"\x0a" + bytes([len(series)]) + series, LIMITS)
    with pytest.raises(WireError):
        read_write_request(b"\x0a\x7f\x00", LIMITS)  # a field longer than the data
    with pytest.raises(WireError, match="wire type"):
        read_write_request(b"\x0b", LIMITS)


# --- what the gate does to a box's series ---


def test_each_series_leaves_with_the_senders_name_and_only_serving_series_pass() -> None:
    sent = [
        psi("fraud", edge_box="shop-13"),  # forged: another box's name
        psi("churn"),  # no name at all
        Series({"__name__": "node_load1", "instance": "box"}, [sample(1.0, 1)]),
        Series({"__name__": "appliance_pipeline_runs_total"}, [sample(1.0, 1)]),  # the centre's own
    ]
    body, outcome = rewrite(snappy_encode(write_request(sent)), "shop-12", ALLOWED, LIMITS)
    out = read_write_request(snappy_decode(body, 1 << 20), LIMITS)
    assert [(s.labels["model"], s.labels["edge_box"]) for s in out] == [
        ("fraud", "shop-12"),
        ("churn", "shop-12"),
    ]
    assert out[0].samples == sent[0].samples
    assert outcome.kept == 2
    assert outcome.dropped == {"node_load1": 1, "appliance_pipeline_runs_total": 1}


def test_a_box_with_its_models_named_writes_for_those_models_alone() -> None:
    sent = [
        psi("wine"),
        psi("fraud"),  # a model the box does not serve: its drift would retrain fraud
        Series({"__name__": "appliance_feature_psi", "feature": "f0"}, [sample(0.9, 1)]),  # no model
        Series({"__name__": "appliance_inference_request_duration_seconds_bucket", "model": "fraud"}, []),
        Series({"__name__": "appliance_inference_requests_total", "model": "wine"}, [sample(3.0, 1)]),
        Series({"__name__": "appliance_inference_in_flight", "protocol": "rest"}, [sample(1.0, 1)]),
        Series({"__name__": "appliance_serving_replicas_ready"}, [sample(2.0, 1)]),
        # what the server counts for a request refused before it knew a model: kept
        Series({"__name__": "appliance_inference_requests_total", "model": ""}, [sample(5.0, 1)]),
        Series({"__name__": "appliance_model_info", "model": ""}, [sample(1.0, 1)]),  # never unnamed
    ]
    body, outcome = rewrite(
        snappy_encode(write_request(sent)), "shop-12", ALLOWED, LIMITS, frozenset({"wine", "breast_cancer"})
    )
    out = read_write_request(snappy_decode(body, 1 << 20), LIMITS)
    assert [(s.name, s.labels.get("model")) for s in out] == [
        ("appliance_feature_psi", "wine"),
        ("appliance_inference_requests_total", "wine"),
        ("appliance_inference_in_flight", None),  # the server's as a whole: no model to check
        ("appliance_serving_replicas_ready", None),
        ("appliance_inference_requests_total", ""),
    ]
    assert all(s.labels["edge_box"] == "shop-12" for s in out)
    assert outcome.kept == 5 and outcome.foreign == {"fraud": 2, "": 2} and outcome.dropped == {}
    # without its models named a box writes for any model, as before
    _, anyone = rewrite(snappy_encode(write_request(sent)), "shop-12", ALLOWED, LIMITS)
    assert anyone.kept == len(sent) and anyone.foreign == {}


def test_the_per_model_families_are_those_whose_series_name_their_model() -> None:
    """Held to the label names the model server declares: a family it labels with ``model`` that
    the catalog did not list would pass the gate for any model."""
    from appliance.monitoring.catalog import MODEL_LABEL, SERVING_PER_MODEL, SERVING_UNNAMED_MODEL
    from appliance.workloads.serving.metrics import ServingMetrics, _ModelCollector

    metrics = ServingMetrics(lambda: [])
    declared = {
        "appliance_inference_requests_total": metrics.requests._labelnames,
        "appliance_inference_in_flight": metrics.in_flight._labelnames,
        **{h.name: h.labelnames for h in (metrics.duration, metrics.queue, metrics.compute, metrics.batch)},
        **{family.name: family._labelnames for family in _ModelCollector(lambda: []).collect()},
    }
    assert {name for name, labels in declared.items() if MODEL_LABEL in labels} == SERVING_PER_MODEL
    assert set(declared) <= set(SERVING_METRICS)
    assert SERVING_UNNAMED_MODEL < SERVING_PER_MODEL


def test_the_server_writes_no_model_only_where_the_catalog_says(tmp_path: Path) -> None:
    """A request refused before a model was known is counted under ``model=""`` in the families of
    ``SERVING_UNNAMED_MODEL`` and nowhere else, so a scoped box's own refusals pass the gate."""
    from prometheus_client import generate_latest

    from appliance.monitoring.catalog import SERVING_UNNAMED_MODEL
    from appliance.workloads.serving.metrics import ServingMetrics
    from appliance.workloads.serving.service import InferenceService

    metrics = ServingMetrics(lambda: [])
    service = type("S", (), {"metrics": metrics, "repo": type("R", (), {"entries": {}})()})()
    InferenceService.record(service, "no-such-model", "1", "rest", "not_found", 0.0)  # type: ignore[arg-type]
    text = generate_latest(metrics.registry).decode()
    # (prometheus_client's own _created series are not the gate's to pass)
    unnamed = {line.split("{")[0] for line in text.splitlines() if 'model=""' in line} & ALLOWED
    assert unnamed and unnamed <= _series(SERVING_UNNAMED_MODEL)
    assert "no-such-model" not in text


def test_the_accounts_file_holds_the_models_of_the_boxes_that_name_them(tmp_path: Path) -> None:
    from appliance.monitoring.write_gate import accounts_file, load_accounts

    text = accounts_file(
        {"appliance-edge-shop-12": "a", "appliance-edge-shop-13": "b"},
        {"appliance-edge-shop-13": ["wine", "fraud"], "appliance-edge-gone": ["x"]},
    )
    (tmp_path / "accounts.json").write_text(text)
    accounts, models = load_accounts(tmp_path / "accounts.json")
    assert accounts == {
        "appliance-edge-shop-12": password_digest("a"),
        "appliance-edge-shop-13": password_digest("b"),
    }
    assert models == {"shop-13": frozenset({"wine", "fraud"})}  # an account not made has no scope


# --- the server ---


class Receiver(BaseHTTPRequestHandler):
    """The central receiver's place in a unit test: keeps what it is sent."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        Receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[tuple[GateServer, ThreadingHTTPServer]]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    (tmp_path / "pw").write_text("central")
    upstream = Upstream(
        f"http://127.0.0.1:{receiver.server_address[1]}/api/v1/write", "appliance", tmp_path / "pw"
    )
    server = GateServer(("127.0.0.1", 0), {"appliance-edge-shop-12": password_digest("right")}, upstream)
    for one in (server, receiver):
        threading.Thread(target=one.serve_forever, args=(0.05,), daemon=True).start()
    Receiver.bodies = []
    yield server, receiver
    for one in (server, receiver):
        one.shutdown()
        one.server_close()


def post(
    server: GateServer,
    body: bytes,
    user: str = "appliance-edge-shop-12",
    password: str = "right",
    path: str = "/api/v1/write",
    **headers: str,
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    sent = {"Authorization": f"Basic {auth}", "Content-Encoding": "snappy", "Content-Length": str(len(body))}
    connection.putrequest("POST", path)
    for name, value in (sent | {k.replace("_", "-"): v for k, v in headers.items()}).items():
        connection.putheader(name, value)
    connection.endheaders()
    connection.send(body)
    answer = connection.getresponse()
    text = answer.read().decode()
    connection.close()
    return answer.status, text


def test_the_gate_sends_the_rewritten_series_on_as_the_centres_account(
    gate: tuple[GateServer, ThreadingHTTPServer],
) -> None:
    server, _ = gate
    status, _ = post(server, snappy_encode(write_request([psi("fraud", edge_box="central")])))
    assert status == 204
    [body] = Receiver.bodies
    [series] = read_write_request(snappy_decode(body, 1 << 20), LIMITS)
    assert series.labels["edge_box"] == "shop-12"


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"password": "wrong"}, 401, "password is wrong"),
        ({"user": "appliance", "password": "right"}, 401, "unknown"),
        ({"Content_Length": str(64 * 1024 * 1024)}, 413, "over the limit"),
        ({"Content_Encoding": "gzip"}, 415, "snappy"),
        ({"path": "/api/v1/query"}, 404, "only POST /api/v1/write"),
    ],
)
def test_the_gate_refuses_before_it_reads_or_writes_anything(
    gate: tuple[GateServer, ThreadingHTTPServer], kwargs: dict[str, str], status: int, message: str
) -> None:
    server, _ = gate
    # the declared length is never sent in full: a refusal must come before the body is read
    answer, text = post(server, b"x", **kwargs)
    assert answer == status and message in text, text
    assert Receiver.bodies == []


def test_a_malformed_body_is_a_400_and_an_unreachable_centre_a_503(
    gate: tuple[GateServer, ThreadingHTTPServer],
) -> None:
    server, receiver = gate
    status, text = post(server, b"\x05\x00garbage")
    assert status == 400 and "not a remote-write request" in text
    assert Receiver.bodies == []
    receiver.shutdown()
    receiver.server_close()
    status, text = post(server, snappy_encode(write_request([psi("fraud")])))
    assert status == 503 and "cannot be reached" in text, text

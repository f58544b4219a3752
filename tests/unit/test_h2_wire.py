"""Request heads against RFC 9113 §8, checked by h2_wire.Head (what grpc_h2 resets a stream for)."""

from __future__ import annotations

import pytest

from appliance.workloads.serving.h2_wire import Head

GOOD = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"authorization", b"Bearer t"),
]


def test_a_grpc_request_head_is_valid_and_read() -> None:
    head = Head([*GOOD, (b"x-id", b"7"), (b"x-bin", b"AAE")])
    assert not head.field_error and not head.request_error and head.grpc
    assert head.path == "/inference.GRPCInferenceService/ModelInfer"
    assert head.authorization == "Bearer t" and head.count == 9
    assert ("x-id", "7") in head.metadata and ("x-bin", b"\x00\x01") in head.metadata


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ([*GOOD, (b"X-Upper", b"v")], "uppercase"),
        ([*GOOD, (b"connection", b"keep-alive")], "connection-specific"),
        ([*GOOD, (b"transfer-encoding", b"chunked")], "connection-specific"),
        ([h for h in GOOD if h[0] != b"te"] + [(b"te", b"gzip")], "te other than trailers"),
        ([*GOOD, (b":method", b"GET")], "pseudo-header after a regular field"),
        ([GOOD[0], GOOD[0], *GOOD[1:]], "repeated :method"),
        ([(b":status", b"200"), *GOOD], "not allowed"),
        ([(b":foo", b"x"), *GOOD], "not allowed"),
        ([*GOOD, (b"content-length", b"x1")], "content-length"),
    ],
)
def test_field_rules(headers: list[tuple[bytes, bytes]], needle: str) -> None:
    assert needle in Head(headers).field_error


@pytest.mark.parametrize("missing", [b":method", b":scheme", b":path"])
def test_a_request_needs_method_scheme_and_path(missing: bytes) -> None:
    head = Head([h for h in GOOD if h[0] != missing])
    assert not head.field_error and head.request_error


def test_an_empty_path_is_malformed() -> None:
    head = Head([(k, b"" if k == b":path" else v) for k, v in GOOD])
    assert head.request_error == "empty :path"


def test_trailers_have_no_pseudo_headers() -> None:
    assert not Head([(b"x-checksum", b"1")]).has_pseudo
    assert Head([(b":path", b"/")]).has_pseudo


def test_not_grpc_unless_post_with_application_grpc() -> None:
    assert not Head([(k, b"GET" if k == b":method" else v) for k, v in GOOD]).grpc
    assert not Head([(k, b"text/plain" if k == b"content-type" else v) for k, v in GOOD]).grpc

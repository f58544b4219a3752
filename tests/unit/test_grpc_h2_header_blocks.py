"""Decoded header blocks reused across calls, and the HPACK table kept right while they are.

The transport keeps the decoding of header blocks that clients repeat (`grpc_h2._decode`). Two
kinds of client are modelled here: one whose encoder refers back to its dynamic table (grpcio,
hpack's own encoder), and nginx's ``grpc_pass``, which sends every request's ``:path`` and
``:authority`` as literals *with incremental indexing* (adding them to the table each time) and
never refers to the table. Whatever was reused, each call must reach the method its block names
and the server's table must stay the one the client's encoder assumes.
"""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder
from tritonclient.grpc import service_pb2 as pb

from appliance.workloads.serving import h2_wire as w
from tests._h2client import DATA, END_HEADERS, END_STREAM, HEADERS, H2Client, frame, grpc_message
from tests._h2server import INFER, LIVE, TOKEN, running


def _str(value: bytes) -> bytes:
    """An HPACK string literal without Huffman (RFC 7541 §5.2), short values only."""
    assert len(value) < 127
    return bytes([len(value)]) + value


def _tail() -> bytes:
    """content-type, te and authorization as literals without indexing, with new names."""
    fields = (
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"authorization", f"Bearer {TOKEN}".encode()),
    )
    return b"".join(b"\x00" + _str(name) + _str(value) for name, value in fields)


def nginx_block(path: str, authority: str = "serving_grpc") -> bytes:
    """A request header block as nginx's grpc module writes it: ``:method POST`` and ``:scheme
    http`` from the static table, ``:path`` and ``:authority`` as literals with incremental
    indexing (static names 4 and 1), the rest literals without indexing with new names."""
    return b"\x83\x86\x44" + _str(path.encode()) + b"\x41" + _str(authority.encode()) + _tail()


def test_static_and_literal_blocks_are_context_free_and_say_what_they_insert() -> None:
    assert w.context_free_inserts(nginx_block(INFER)) == (2, 3)  # :path, :authority
    plain = Encoder().encode([(":method", "POST"), ("te", "trailers")], huffman=True)
    assert w.context_free_inserts(plain) == (1,)  # hpack's encoder indexes te: trailers
    assert w.context_free_inserts(b"\x83\x86\x84") == ()  # static entries only
    assert w.context_free_inserts(b"\x00" + _str(b"x-a") + _str(b"b")) == ()
    assert w.context_free_inserts(b"\x10" + _str(b"x-a") + _str(b"b")) == ()  # never indexed


# A block nginx 1.22's grpc_pass sent to a replica (captured behind the balancer; a grpc.aio
# client's ModelInfer with the benchmark's token): Huffman-coded, :path and :authority indexed.
NGINX_1_22_BLOCK = bytes.fromhex(
    "8386449f60d54a5b0b510abe2dbaef64aa52d85a885dc5b3b98856341e42d192a94b674189416cee6aa68a6b2b27"
    "008df2b4a7b3c0ec90b22d5d8749ff839d29af00027465864d833505b11f008921ea496a4ac9f5597f8b1d75d062"
    "0d263d4c4d6564008e9acac8b0c842d6958b510f21aa9b913485a9264fafa5242cb40d25fa526f66af0087b505b1"
    "61cc5a93aa9acac8b57e9339ea5868f5510c7602bbcdaeca93595916230dbcb817029fd506aadf3f6a1274a6b17f"
    "7f00891da99cf61bd8d263d58dba51d85b148cb51275927ea5ab"
)


def test_a_block_nginx_sent_is_context_free_with_path_and_authority_inserted() -> None:
    fields = Decoder().decode(NGINX_1_22_BLOCK)
    assert [fields[i][0] for i in w.context_free_inserts(NGINX_1_22_BLOCK) or ()] == [":path", ":authority"]
    assert (":path", INFER) in fields


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"\x83\xbe", "an indexed field in the dynamic table (62)"),
        (b"\x7e" + _str(b"v"), "a literal whose name is dynamic entry 62"),
        (b"\x0f\x2f" + _str(b"v"), "a literal without indexing, name index 62 (multi-byte)"),
        (b"\x20\x83", "a table size update"),
        (b"\x83\x44\x05ab", "a truncated string"),
    ],
)
def test_blocks_that_depend_on_the_table_are_not_context_free(block: bytes, why: str) -> None:
    assert w.context_free_inserts(block) is None, why


def _call(client: H2Client, block: bytes, model: str) -> bytes:
    sid = client.next_stream
    client.next_stream += 2
    request = pb.ModelInferRequest(model_name=model).SerializeToString()
    client.send(frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, END_STREAM, sid, grpc_message(request)))
    assert client.grpc_status(sid)[0] == 0
    body = next(f for f in client.frames if f.kind == DATA and f.stream == sid).payload
    return body[5:]


def test_nginx_style_blocks_reused_still_fill_the_table_later_blocks_refer_to() -> None:
    """Each nginx block adds its ``:path``; a later block naming dynamic entry 63 (the
    second-newest entry: the last block's ``:path``, then its ``:authority`` at 62) must reach that
    method. If a reused block skipped its inserts, entry 63 would still be the older ``:path``."""
    reference = Decoder()
    with running() as srv, H2Client(srv.port) as client:
        sent = [nginx_block(INFER), nginx_block(LIVE), nginx_block(INFER), nginx_block(INFER)]
        for i, block in enumerate(sent):
            answer = _call(client, block, f"m{i}")
            reference.decode(block)
            if block == sent[1]:
                assert pb.ServerLiveResponse.FromString(answer).live
            else:
                assert pb.ModelInferResponse.FromString(answer).model_name == f"m{i}"
        # a client that refers to the table: dynamic 63 is the newest :path (INFER), 62 :authority
        referring = b"\x83\x86\xbf\xbe" + _tail()
        fields = dict(reference.decode(referring))
        assert fields[":path"] == INFER
        assert pb.ModelInferResponse.FromString(_call(client, referring, "after")).model_name == "after"
        # the connection's table holds what the client's (nginx's) encoder assumes, entry for entry
        conn = srv.connection()
        assert list(conn.decoder.header_table.dynamic_entries) == list(reference.header_table.dynamic_entries)
        assert len(conn._free) == 2  # the INFER and LIVE blocks, each decoded once


def test_a_reused_block_lands_on_the_method_the_table_now_names() -> None:
    """A block that refers to the table is reused only until the table changes: the same bytes
    name another method once an nginx-style block has inserted a new ``:path``, whether that
    block was decoded afresh or reused."""
    with running() as srv, H2Client(srv.port) as client:
        refers = b"\x83\x86\xbf" + _tail()  # :path from dynamic entry 63

        def lands_on_infer(model: str) -> bool:
            answer = _call(client, refers, model)
            return pb.ModelInferResponse.FromString(answer).model_name == model

        _call(client, nginx_block(INFER), "a")
        assert lands_on_infer("b") and lands_on_infer("c")  # the second one reused
        _call(client, nginx_block(LIVE), "d")  # decoded afresh
        assert not lands_on_infer("e")
        _call(client, nginx_block(INFER), "f")  # reused: its insert must still forget "refers"
        assert lands_on_infer("g")
        _call(client, nginx_block(LIVE), "h")
        assert not lands_on_infer("i")


def test_grpcio_style_encoders_still_decode_right_call_after_call() -> None:
    """hpack's encoder indexes on first use and refers to the table after: every call's answer
    is its own."""
    with running() as srv, H2Client(srv.port) as client:
        for i in range(6):
            path = INFER if i % 3 else LIVE
            block = client.encoder.encode(client.request_headers(path, TOKEN, [("x-call", str(i))]))
            answer = _call(client, block, f"m{i}")
            if path == LIVE:
                assert pb.ServerLiveResponse.FromString(answer).live
            else:
                assert pb.ModelInferResponse.FromString(answer).model_name == f"m{i}"

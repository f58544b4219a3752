"""Triton's system shared-memory extension, the server's side: what a registration may name,
the limits, reading inputs from and writing outputs to a region, and the REST and gRPC codecs
with tensors in shared memory. Regions live under a temporary folder standing for /dev/shm
(the same open, fstat and mmap calls); the real /dev/shm is the integration test's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb  # the upstream stub, as the other unit tests load it

from appliance.answers import Answers
from appliance.answers_file import parse_answers
from appliance.cli.serve_cmd import serve_cmd
from appliance.context import AppContext
from appliance.errors import InvalidInputError
from appliance.render import render_stack
from appliance.workloads.serving import balancer, rest_codec, supervisor
from appliance.workloads.serving.errors import BadRequest, Forbidden
from appliance.workloads.serving.grpc_codec import decode_inputs, encode_outputs, output_targets, wants_raw
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.peer import FORWARDED_HEADER, Peer, socket_owner
from appliance.workloads.serving.shared_memory import NO_REGIONS, SharedMemoryRegions, TensorRef, tensor_ref

IMAGE = np.random.default_rng(3).normal(size=(1, 3, 8, 8)).astype(np.float32)


def _object(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return f"/{name}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def regions(root: Path) -> SharedMemoryRegions:
    return SharedMemoryRegions(ServerLimits(), allowed=True, root=root)


def test_an_input_is_read_from_its_range_and_an_output_written_to_its_own(
    root: Path, regions: SharedMemoryRegions
) -> None:
    key = _object(root, "in", b"\xff" * 16 + IMAGE.tobytes() + b"\xee" * 8)
    regions.register("in", key, 16, IMAGE.nbytes)
    got = regions.read(TensorRef("in", 0, IMAGE.nbytes), "FP32", IMAGE.shape, "x")
    np.testing.assert_array_equal(got, IMAGE)
    out_key = _object(root, "out", bytes(64))
    regions.register("out", out_key, 0, 64)
    answer = np.arange(4, dtype=np.float32)
    regions.resolve(TensorRef("out", 8, 32), "y").write(answer.tobytes(), "y")
    data = (root / "out").read_bytes()  # the client's view of the same object
    assert data[:8] == bytes(8)
    np.testing.assert_array_equal(np.frombuffer(data[8:24], np.float32), answer)
    assert regions.status(None) == [
        {"name": "in", "key": "/in", "offset": 16, "byte_size": IMAGE.nbytes},
        {"name": "out", "key": "/out", "offset": 0, "byte_size": 64},
    ]
    assert regions.status("out") == [{"name": "out", "key": "/out", "offset": 0, "byte_size": 64}]


def test_a_region_deep_in_its_object_reads_its_own_bytes(root: Path, regions: SharedMemoryRegions) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB
    regions.register("deep", _object(root, "big", data), 5_000_003, 100)  # not page-aligned
    view = regions.read(TensorRef("deep", 4, 96), "UINT8", (96,), "x")
    assert view.tobytes() == data[5_000_007:5_000_103]
    assert regions.status("deep") == [{"name": "deep", "key": "/big", "offset": 5_000_003, "byte_size": 100}]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("/../etc", "not a POSIX shared-memory name"),
        ("/a/b", "not a POSIX shared-memory name"),
        ("noslash", "not a POSIX shared-memory name"),
        ("/", "not a POSIX shared-memory name"),
        ("/..", "not a POSIX shared-memory name"),
        ("/" + "a" * 256, "not a POSIX shared-memory name"),
        (7, "not a POSIX shared-memory name"),
        ("/missing", "no shared memory object /missing"),
    ],
)
def test_keys_that_are_not_one_shared_memory_name_are_refused(
    regions: SharedMemoryRegions, key: object, why: str
) -> None:
    with pytest.raises(BadRequest, match=why):
        regions.register("r", key, 0, 4)
    assert regions.status(None) == []


def test_a_link_a_folder_a_fifo_and_another_users_object_are_refused(
    root: Path, regions: SharedMemoryRegions, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = root.parent / f"{root.name}-secret"
    secret.write_bytes(b"s" * 64)
    (root / "link").symlink_to(secret)
    with pytest.raises(BadRequest, match="cannot open shared memory object /link"):
        regions.register("r", "/link", 0, 4)
    (root / "dir").mkdir()
    with pytest.raises(BadRequest, match="cannot open shared memory object /dir"):
        regions.register("r", "/dir", 0, 4)
    os.mkfifo(root / "fifo")  # opens (non-blocking) but is no shared-memory file
    with pytest.raises(BadRequest, match="/fifo is not a regular shared-memory file"):
        regions.register("r", "/fifo", 0, 4)
    _object(root, "theirs", bytes(64))
    me = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)  # the object is now another user's
    with pytest.raises(BadRequest, match="belongs to another user"):
        regions.register("r", "/theirs", 0, 4)
    assert regions.status(None) == []


def test_sizes_names_and_limits(root: Path) -> None:
    limits = ServerLimits(max_shm_regions=2, max_shm_bytes=4096)
    regions = SharedMemoryRegions(limits, allowed=True, root=root)
    key = _object(root, "obj", bytes(8192))
    with pytest.raises(BadRequest, match="holds 8192 bytes, fewer than offset 8000"):
        regions.register("r", key, 8000, 400)
    with pytest.raises(BadRequest, match="byte_size must be at least 1"):
        regions.register("r", key, 0, 0)
    with pytest.raises(BadRequest, match="offset must be a non-negative integer"):
        regions.register("r", key, -1, 4)
    with pytest.raises(BadRequest, match="byte_size must be a non-negative integer"):
        regions.register("r", key, 0, None)
    with pytest.raises(BadRequest, match="region name must be"):
        regions.register("", key, 0, 4)
    with pytest.raises(BadRequest, match="past max_shm_bytes"):
        regions.register("big", key, 0, 4097)
    regions.register("a", key, 0, 2048)
    with pytest.raises(BadRequest, match="already registered; unregister it first"):
        regions.register("a", key, 0, 16)
    regions.register("b", key, 2048, 2048)
    with pytest.raises(BadRequest, match="max_shm_regions"):
        regions.register("c", key, 0, 1)
    regions.unregister("a")
    regions.unregister("never-registered")  # as in Triton: not an error
    assert [r["name"] for r in regions.status(None)] == ["b"]
    regions.unregister(None)
    assert regions.status(None) == []
    with pytest.raises(BadRequest, match="unknown shared memory region 'b'"):
        regions.status("b")


def test_tensor_ranges_must_lie_inside_their_region(root: Path, regions: SharedMemoryRegions) -> None:
    regions.register("r", _object(root, "obj", bytes(64)), 0, 64)
    with pytest.raises(BadRequest, match="runs past region 'r' of 64 bytes"):
        regions.read(TensorRef("r", 32, 64), "FP32", (16,), "x")
    with pytest.raises(BadRequest, match="needs 64 bytes, got 32"):
        regions.read(TensorRef("r", 0, 32), "FP32", (16,), "x")
    with pytest.raises(
        BadRequest, match="output 'y' is 128 bytes, more than its shared_memory_byte_size of 64"
    ):
        regions.resolve(TensorRef("r", 0, 64), "y").write(bytes(128), "y")
    with pytest.raises(BadRequest, match="names unknown shared memory region 'nope'"):
        regions.resolve(TensorRef("nope", 0, 4), "y")


def test_an_object_shrunk_after_registration_is_a_400_not_a_crash(
    root: Path, regions: SharedMemoryRegions
) -> None:
    key = _object(root, "shrinks", IMAGE.tobytes())
    regions.register("s", key, 0, IMAGE.nbytes)
    os.truncate(root / "shrinks", 16)  # what re-creating the key smaller does
    with pytest.raises(BadRequest, match=f"region 's' ends {IMAGE.nbytes - 16} bytes short"):
        regions.read(TensorRef("s", 0, IMAGE.nbytes), "FP32", IMAGE.shape, "x")
    regions.resolve(TensorRef("s", 0, 8), "y").write(b"12345678", "y")  # writing grows it back
    assert (root / "shrinks").read_bytes()[:8] == b"12345678"


def test_an_output_goes_to_the_object_resolved_before_the_model_ran(
    root: Path, regions: SharedMemoryRegions
) -> None:
    regions.register("o", _object(root, "first", bytes(8)), 0, 8)
    target = regions.resolve(TensorRef("o", 0, 8), "y")  # the request's view, before the model runs
    regions.unregister("o")
    regions.register("o", _object(root, "second", bytes(8)), 0, 8)  # the name now means another object
    target.write(b"abcdefgh", "y")
    assert (root / "first").read_bytes() == b"abcdefgh"
    assert (root / "second").read_bytes() == bytes(8)


def test_tensor_parameters_need_region_and_size_together() -> None:
    assert tensor_ref({}, "x") is None
    assert tensor_ref({"binary_data_size": 4}, "x") is None
    assert tensor_ref({"shared_memory_region": "r", "shared_memory_byte_size": 8}, "x") == TensorRef(
        "r", 0, 8
    )
    for params, why in (
        ({"shared_memory_region": "r"}, "give both"),
        ({"shared_memory_byte_size": 8}, "give both"),
        ({"shared_memory_offset": 8}, "without shared_memory_region"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 8}, "must be a region name"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "non-negative integer"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": -2},
            "non-negative",
        ),
    ):
        with pytest.raises(BadRequest, match=why):
            tensor_ref(params, "x")


def test_a_server_without_the_extension_refuses_and_says_how_to_allow_it(root: Path) -> None:
    off = SharedMemoryRegions(ServerLimits(), allowed=False, root=root)
    with pytest.raises(BadRequest, match="--allow-client-shm"):
        off.register("r", _object(root, "obj", bytes(8)), 0, 8)
    with pytest.raises(BadRequest, match="--allow-client-shm"):
        NO_REGIONS.read(TensorRef("r", 0, 8), "FP32", (2,), "x")
    caller = off.for_caller(None, False)
    assert caller.status(None) == []  # what clients ask around a run: an empty table, no error
    caller.unregister(None)
    with pytest.raises(BadRequest, match="--allow-client-shm"):
        caller.register("r", "/obj", 0, 8)


class _Peer(Peer):
    """A connection whose client is (or is not) this host's server user, for the gate alone."""

    def __init__(self, same: bool) -> None:
        super().__init__(("127.0.0.1", 1), ("127.0.0.1", 2))
        self._same_user = same


def test_only_a_local_client_of_the_servers_user_may_use_regions(
    root: Path, regions: SharedMemoryRegions
) -> None:
    key = _object(root, "in", IMAGE.tobytes())
    local = regions.for_caller(_Peer(True), forwarded=False)
    local.register("in", key, 0, IMAGE.nbytes)
    ref = TensorRef("in", 0, IMAGE.nbytes)
    np.testing.assert_array_equal(local.read(ref, "FP32", IMAGE.shape, "x"), IMAGE)
    uses = (
        lambda c: c.register("other", key, 0, 8),
        lambda c: c.unregister(None),
        lambda c: c.status(None),
        lambda c: c.read(ref, "FP32", IMAGE.shape, "x"),
        lambda c: c.resolve(ref, "y"),
    )
    for caller in (
        regions.for_caller(_Peer(False), forwarded=False),  # another host or another account
        regions.for_caller(_Peer(True), forwarded=True),  # through the gateway, whoever runs nginx
        regions.for_caller(None, forwarded=False),
    ):
        for use in uses:
            with pytest.raises(Forbidden, match="only for clients on the serving host"):
                use(caller)
    assert [r["name"] for r in local.status(None)] == ["in"]  # nothing the others did took


def test_the_owner_of_a_loopback_connection_comes_from_the_kernels_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1\n"
        "   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2\n"
    )
    server, client = ("127.0.0.1", 0x1F90), ("127.0.0.1", 0xD431)
    assert socket_owner(server, client, (table,)) == 1000  # the client's end, not the server's
    assert socket_owner(server, ("127.0.0.1", 1), (table,)) is None
    mapped = tmp_path / "tcp6"  # an IPv6 client socket on an IPv4 connection (gRPC's C core)
    mapped.write_text(
        "  sl  local_address                         remote_address                        st\n"
        "   0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000100007F:1F90 01"
        " 00000000:00000000 00:00000000 00000000  1001        0 3\n"
    )
    assert socket_owner(server, client, (mapped,)) == 1001
    closing = tmp_path / "closing"  # a row not established (TIME_WAIT here) is nobody's connection
    closing.write_text(table.read_text().replace(" 01 ", " 06 "))
    assert socket_owner(server, client, (closing,)) is None
    assert socket_owner(server, client, (table, table)) is None  # two rows for one connection: no answer


def test_a_peer_counts_as_local_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.workloads.serving.peer as peer_module

    monkeypatch.setattr(peer_module, "socket_owner", lambda local, remote: os.geteuid())  # owned by us
    assert not Peer(("10.0.0.1", 8081), ("10.0.0.2", 5555)).same_user()  # another host
    assert Peer(("127.0.0.1", 8081), ("127.0.0.1", 5555)).same_user()
    assert Peer(("::1", 8081, 0, 0), ("::1", 5555, 0, 0)).same_user()
    assert Peer(("::ffff:127.0.0.1", 8081, 0, 0), ("::ffff:127.0.0.1", 5555, 0, 0)).same_user()
    assert not Peer(None, None).same_user()  # a transport without addresses (a pipe)


def test_the_replica_balancer_marks_what_it_forwards_and_the_supervisor_refuses_regions() -> None:
    conf = balancer.render("127.0.0.1", 8080, 8081, [18080, 18082], [18081, 18083])
    assert f"proxy_set_header {FORWARDED_HEADER} http;" in conf
    assert f"grpc_set_header {FORWARDED_HEADER} http;" in conf
    for on in (["--allow-client-shm"], ["--allow-client-shm=true"], ["--allow-client-shm", "yes"]):
        with pytest.raises(SystemExit):
            supervisor.parse_args(["--max-replicas", "2", "--", "--model", "/m", *on])
    for off in (["--allow-client-shm", "false"], ["--allow-client-shm=0"], []):  # said off, or not said
        supervisor.parse_args(["--max-replicas", "2", "--", "--model", "/m", *off])
    _args, serve_args = supervisor.parse_args(["--max-replicas", "1", "--", "--allow-client-shm", "true"])
    assert serve_args == ["--allow-client-shm", "true"]
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as c,
    ):
        accepted, _ = listener.accept()
        with accepted:
            assert Peer.of_socket(accepted).same_user()  # this process on both ends
            assert socket_owner(accepted.getsockname(), c.getsockname()) == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_a_client_of_another_user_is_not_the_servers_user() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)  # a child that never connects fails the test, not hangs it
        port = listener.getsockname()[1]
        code = f"import socket, time; s = socket.create_connection(('127.0.0.1', {port})); time.sleep(5)"
        # the system's interpreter: the virtualenv's may sit where that user cannot read
        child = subprocess.Popen(["/usr/bin/python3", "-c", code], user=65534, cwd="/")
        try:
            accepted, _ = listener.accept()
            with accepted:
                assert socket_owner(accepted.getsockname(), accepted.getpeername()) == 65534
                assert not Peer.of_socket(accepted).same_user()
        finally:
            child.kill()
            child.wait()


# --- the codecs ------------------------------------------------------------------------------


def _rest_body(params: dict, outputs: list | None = None) -> bytes:
    doc: dict = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(IMAGE.shape), "parameters": params}]
    }
    if outputs is not None:
        doc["outputs"] = outputs
    return json.dumps(doc).encode()


def test_rest_reads_an_input_and_writes_an_output_through_regions(
    root: Path, regions: SharedMemoryRegions
) -> None:
    regions.register("in", _object(root, "in", IMAGE.tobytes()), 0, IMAGE.nbytes)
    regions.register("out", _object(root, "out", bytes(64)), 0, 64)
    ref = {"shared_memory_region": "in", "shared_memory_byte_size": IMAGE.nbytes}
    out = [
        {"name": "y", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64}},
        {"name": "z"},
    ]
    req = rest_codec.decode(_rest_body(ref, out), None, regions)
    np.testing.assert_array_equal(req.arrays["x"], IMAGE)
    y, z = np.array([1.5, 2.5], np.float32), np.array([7], np.int64)
    body, json_len = rest_codec.encode("m", "1", req, ["y", "z"], [y, z])
    assert json_len is None
    doc = json.loads(body)
    assert doc["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [2]}  # no data: it is in "out"
    assert doc["outputs"][1]["data"] == [7]
    np.testing.assert_array_equal(np.frombuffer((root / "out").read_bytes()[:8], np.float32), y)


def test_rest_refuses_data_beside_a_region_and_unknown_output_regions_before_running(
    root: Path, regions: SharedMemoryRegions
) -> None:
    regions.register("in", _object(root, "in", IMAGE.tobytes()), 0, IMAGE.nbytes)
    ref = {"shared_memory_region": "in", "shared_memory_byte_size": IMAGE.nbytes}
    with pytest.raises(BadRequest, match="is in shared memory: give no 'data'"):
        doc = json.loads(_rest_body(ref))
        doc["inputs"][0]["data"] = [0.0]
        rest_codec.decode(json.dumps(doc).encode(), None, regions)
    bad_out = [{"name": "y", "parameters": {"shared_memory_region": "gone", "shared_memory_byte_size": 8}}]
    with pytest.raises(BadRequest, match="unknown shared memory region 'gone'"):
        rest_codec.decode(_rest_body(ref, bad_out), None, regions)
    with pytest.raises(BadRequest, match="--allow-client-shm"):
        rest_codec.decode(_rest_body(ref), None)  # a server without the extension


def _grpc_request(shm_input: bool, raw_other: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype="FP32", shape=list(IMAGE.shape))
    if shm_input:
        t.parameters["shared_memory_region"].string_param = "in"
        t.parameters["shared_memory_byte_size"].int64_param = IMAGE.nbytes
    else:
        req.raw_input_contents.append(IMAGE.tobytes())
    second = np.array([[4, 5]], np.int64)
    req.inputs.add(name="k", datatype="INT64", shape=[1, 2])
    if raw_other or not shm_input:
        req.raw_input_contents.append(second.tobytes())
    else:
        req.inputs[1].contents.int64_contents.extend([4, 5])
    o = req.outputs.add(name="y")
    o.parameters["shared_memory_region"].string_param = "out"
    o.parameters["shared_memory_byte_size"].int64_param = 16
    o.parameters["shared_memory_offset"].int64_param = 8
    req.outputs.add(name="z")
    return pb.ModelInferRequest.FromString(req.SerializeToString())


@pytest.mark.parametrize("raw_other", [True, False])
def test_grpc_reads_regions_and_counts_raw_contents_only_for_the_other_inputs(
    root: Path, regions: SharedMemoryRegions, raw_other: bool
) -> None:
    regions.register("in", _object(root, "in", IMAGE.tobytes()), 0, IMAGE.nbytes)
    regions.register("out", _object(root, "out", bytes(32)), 0, 32)
    req = _grpc_request(shm_input=True, raw_other=raw_other)
    arrays, datatypes = decode_inputs(req, regions)
    np.testing.assert_array_equal(arrays["x"], IMAGE)
    assert arrays["k"].tolist() == [[4, 5]]
    assert datatypes == {"x": "FP32", "k": "INT64"}
    assert wants_raw(req)  # tritonclient reads only raw contents back
    targets = output_targets(req, regions)
    assert [(n, t.region.name, t.offset, t.byte_size) for n, t in targets.items()] == [("y", "out", 8, 16)]
    response = pb.ModelInferResponse()
    y, z = np.array([1.0, 2.0, 3.0], np.float32), np.array([9.0], np.float32)
    encode_outputs(response, ["y", "z"], [y, z], True, targets)
    assert list(response.raw_output_contents) == [b"", z.tobytes()]  # index kept for "z"
    assert response.outputs[0].parameters["shared_memory_region"].string_param == "out"
    assert response.outputs[0].parameters["shared_memory_byte_size"].int64_param == 12
    np.testing.assert_array_equal(np.frombuffer((root / "out").read_bytes()[8:20], np.float32), y)


def test_grpc_refuses_a_wrong_count_of_raw_contents_and_contents_beside_a_region(
    root: Path, regions: SharedMemoryRegions
) -> None:
    regions.register("in", _object(root, "in", IMAGE.tobytes()), 0, IMAGE.nbytes)
    regions.register("out", _object(root, "out", bytes(32)), 0, 32)
    req = _grpc_request(shm_input=True, raw_other=True)
    req.raw_input_contents.append(b"extra")
    with pytest.raises(BadRequest, match="2 raw_input_contents for 1 inputs not in shared memory"):
        decode_inputs(req, regions)
    req = _grpc_request(shm_input=True, raw_other=False)
    req.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(BadRequest, match="input 'x' is in shared memory: give it no contents"):
        decode_inputs(req, regions)
    plain = _grpc_request(shm_input=False, raw_other=True)
    assert decode_inputs(plain, regions)[0]["x"].shape == IMAGE.shape
    regions.unregister("out")
    with pytest.raises(BadRequest, match="unknown shared memory region 'out'"):
        output_targets(plain, regions)


def test_an_fp16_output_makes_every_output_raw_so_tritonclient_finds_each_by_index(
    root: Path, regions: SharedMemoryRegions
) -> None:
    regions.register("out", _object(root, "out", bytes(32)), 0, 32)
    target = regions.resolve(TensorRef("out", 0, 16), "y")
    y, z, w = np.array([1.0], np.float32), np.array([0.5, 2.0], np.float16), np.array([3.0], np.float32)
    response = pb.ModelInferResponse()
    encode_outputs(response, ["y", "z", "w"], [y, z, w], False, {"y": target})  # typed inputs
    assert list(response.raw_output_contents) == [b"", z.tobytes(), w.tobytes()]
    assert not response.outputs[2].contents.fp32_contents


# --- the answers key and the flag ------------------------------------------------------------


def test_the_answers_key_reaches_the_model_server_as_its_flag(tmp_path: Path) -> None:
    def command(**serving: object) -> list[str]:
        data = {"profile": "edge", "object_store": {"kind": "filesystem"}, "serving": serving}
        return render_stack(AppContext(Answers.model_validate(data), tmp_path / "state"))["serving"].command

    on = command(model="/models/mlp", allow_client_shm=True)
    at = on.index("--allow-client-shm")
    assert on[at + 1] == "true" and at > on.index("--")  # the model server's flag, not the supervisor's
    assert "--allow-client-shm" not in command(model="/models/mlp")
    params = serve_cmd.make_context("serve", ["--model", "/m", *on[at : at + 2]]).params
    assert params["allow_client_shm"] is True
    assert serve_cmd.make_context("serve", ["--allow-client-shm", "--model", "/m"]).params["allow_client_shm"]
    assert serve_cmd.make_context("serve", ["--model", "/m"]).params["allow_client_shm"] is False


@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        ("serving:\n  allow_client_shm: true\n  max_replicas: 2\n", "needs serving.max_replicas 1"),
        ("runtime: podman\nserving:\n  allow_client_shm: true\n", "needs runtime: local"),
    ],
)
def test_the_answers_key_is_refused_where_regions_cannot_work(yaml_text: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_answers(yaml_text)
    (problem,) = info.value.problems
    assert words in problem.message

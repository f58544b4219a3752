"""The model server replaced under load without a refused request (appliance/runtimes/handover.py).

Real processes throughout: a running model server that knows nothing of a handover (as the
previous release's), its listening sockets taken by this process, the server stopped (SIGTERM:
it closes its listener and drains), a second server started on the same ports that asks for the
held sockets once its model is loaded. REST (kept-alive and fresh connections) and gRPC clients
post without pause the whole time; none may fail, and every answer must be the model's.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from appliance.runtimes import handover
from tests.integration._serving_fixtures import ServerProcess, start_server, training_data, write_mlp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
TOKEN = "handover-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Load:
    """Clients posting one row without pause until stopped, keeping what failed."""

    def __init__(self, server: ServerProcess, x: np.ndarray, want: list[float]) -> None:
        self.server, self.x, self.want = server, x, want
        self.failures: list[str] = []
        self.answered: Counter[str] = Counter()
        self.retried = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        workers = [self._rest_kept_alive, self._rest_new_connections, self._grpc]
        self.threads = [threading.Thread(target=w, daemon=True) for w in workers]

    def _ok(self, kind: str, values: list[float]) -> None:
        with self._lock:
            if np.allclose(values, self.want, atol=1e-5):
                self.answered[kind] += 1
            else:
                self.failures.append(f"wrong answer {values}")

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def _rest(self, kind: str, client: httpx.Client) -> None:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": self.x.tolist()}]}
        url = f"{self.server.url}/v2/models/mlp/infer"
        try:
            try:
                reply = client.post(url, json=body)
            except httpx.RemoteProtocolError as err:
                # The old server closed this kept-alive connection as it exited: sent again on
                # a new one, as HTTP clients do for a stale connection (RFC 9112 section 9.3.1).
                if "without sending a response" not in str(err):
                    raise
                with self._lock:
                    self.retried += 1
                reply = client.post(url, json=body)
            if reply.status_code != 200:
                self._fail(f"REST {reply.status_code} {reply.text[:200]}")
            else:
                self._ok(kind, reply.json()["outputs"][0]["data"])
        except httpx.HTTPError as err:
            self._fail(f"REST {err!r}")

    def _rest_kept_alive(self) -> None:
        with httpx.Client(headers=AUTH, timeout=60) as client:
            while not self.stop.is_set():
                self._rest("REST kept-alive", client)
                time.sleep(0.005)

    def _rest_new_connections(self) -> None:
        while not self.stop.is_set():
            with httpx.Client(headers=AUTH, timeout=60) as client:
                self._rest("REST new connections", client)
            time.sleep(0.005)

    def _grpc(self) -> None:
        request = pb.ModelInferRequest(model_name="mlp")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 8])
        tensor.contents.fp32_contents.extend(self.x.ravel().tolist())
        with grpc.insecure_channel(self.server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                try:
                    reply = stub.ModelInfer(
                        request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=60
                    )
                    self._ok("gRPC", list(reply.outputs[0].contents.fp32_contents))
                except grpc.RpcError as err:
                    self._fail(f"gRPC {err.code()} {err.details()}")
                except IndexError:
                    self._fail(f"gRPC answer without outputs: {reply}")
                time.sleep(0.005)


@pytest.mark.parametrize("mode", ["held-sockets", "standby-server", "lent-by-the-old-server"])
def test_a_replaced_server_refuses_no_request(tmp_path: Path, mode: str) -> None:
    """held-sockets: the sockets are held while no server accepts (requests wait for the new one
    to load). standby-server: a standby takes them while the old one still serves, serves alone
    once it stops, and hands them to the successor when asked (the runtime's way).
    lent-by-the-old-server: as standby-server, but the old server is of this release and lends
    its sockets when asked: no rights over its process needed."""
    model = write_mlp(tmp_path / "mlp")
    env = {"APPLIANCE_SERVING_TOKEN": TOKEN}
    args = ["--model", f"mlp={model}", "--poll-seconds", "0"]
    path = tmp_path / "serving.handover.sock"
    takes = {**env, handover.HANDOVER_ENV: str(path)}
    lent = mode == "lent-by-the-old-server"
    standby = mode != "held-sockets"
    old = start_server(args, tmp_path, env=takes if lent else env)
    x = training_data(1)
    reply = httpx.post(
        f"{old.url}/v2/models/mlp/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": x.tolist()}]},
        headers=AUTH,
    )
    want = reply.json()["outputs"][0]["data"]
    ports = [old.http_port, old.grpc_port]
    same_ports = [f"--{kind}-port={getattr(old, f'{kind}_port')}" for kind in ("http", "grpc", "metrics")]
    load = Load(old, x, want)
    servers = [old]
    try:
        taken = handover.receive(str(path), None, ports) if lent else handover.take([old.proc.pid], ports)
        assert sorted(taken) == sorted(ports)
        holder = handover.Holder(path, taken)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        for thread in load.threads:
            thread.start()
        time.sleep(1)
        if standby:
            servers.append(
                start_server([*args, *same_ports], tmp_path, env={**takes, handover.OFFER_ENV: str(path)})
            )
            # the standby took the sockets, then offers them again once ready: poll, as the
            # runtime does (appliance.runtimes.local), rather than look once right after the take
            assert holder.given.wait(10)
            deadline = time.monotonic() + 30
            while not handover.offered_again(holder) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert handover.offered_again(holder), "the standby did not offer the sockets again"
            time.sleep(0.5)  # both serve
        before = Counter(load.answered)
        old.stop()  # SIGTERM: the old server closes its listener and finishes what it read
        assert old.proc.returncode == 0
        time.sleep(1)  # a closed port would refuse every request here
        servers.append(start_server([*args, *same_ports], tmp_path, env=takes))
        if standby:
            servers[1].proc.wait(30)  # it handed its sockets on: it drains and exits by itself
            assert servers[1].proc.returncode == 0
        else:
            assert holder.given.wait(10)
        taken_over = Counter(load.answered)
        time.sleep(1)
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(70)
        for server in servers:
            server.stop()
    assert servers[-1].metrics_port == old.metrics_port  # opened once the old server had gone
    log = servers[-1].log.read_text()
    assert f"took over the listening sockets of ports {sorted(ports)}" in log
    assert path.exists()  # the successor lends its own sockets for the next replacement
    print(f"\n{dict(load.answered)} answered, {load.retried} sent again, {len(load.failures)} failed")
    assert load.failures == [], load.failures[:5]
    for kind in ("REST kept-alive", "REST new connections", "gRPC"):  # each served before and after
        assert before[kind] > 0 and load.answered[kind] > taken_over[kind], (kind, before, load.answered)

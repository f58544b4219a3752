"""Serving across hosts behind the gateway, every host installed offline from a bundle: three
hosts (``ctl`` control with the TLS gateway and monitoring, ``srv1`` and ``srv2`` serving two
models), load through the gateway from a pool of keep-alive clients (HTTPS/1.1 and gRPC over TLS,
each on its own connection) whose every answer is checked against the model it named, while (a) a
new model version rolls out one serving host at a time (no failed request), (b) a serving host
leaves the inventory (drained) and comes back (joining once ready), and (c) one serving host is
killed (those requests in flight on it may fail, at most one per client; after the fail window
none does).

The hosts' network has no route out (``podman network create --internal``): what they install
comes from the bundle the controller sends, made by ``appliance bundle create`` with the serving
host's wheels (resolved by ``appliance.cluster.requirements``) and the roles' Debian packages with
their closure. ``srv2`` has no virtualenv mounted: ``up`` makes it one from those wheels, and it
serves from that alone, next to ``srv1`` running the checkout's. The roles' packages are purged
from ``ctl`` (PostgreSQL, Prometheus, Alertmanager, node exporter, nginx) and ``srv2`` (node
exporter, python3-venv) first, so ``up`` installs them from the bundle's signed debs. Before the
first ``up``: a bundle with one altered deb is refused, naming the file, before any host changes;
``plan`` with the bundle names the debs and wheels each fresh host would get and writes nothing.
On a machine whose apt is not Debian 12's, which makes the debs, the lab takes the wheelhouse
alone (``cluster.wheelhouse``) and those checks skip.

The hosts are podman containers running systemd (tests/integration/_cluster_hosts.py)."""

from __future__ import annotations

import http.client
import io
import json
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from appliance.cluster.requirements import host_requirements, resolve_wheelhouse
from appliance.gateway import CONNECT_TIMEOUT_S, FAIL_TIMEOUT_S, UPSTREAM_IDLE_S
from tests.integration._cluster_hosts import ROOT
from tests.integration._cluster_lab import (
    LOAD_PACE_S,
    ClusterLab,
    assert_installed_from,
    assert_no_route_out,
    assert_venv_made_from,
    bundle_index,
    cluster_lab,
    debian_12,
    make_bundle,
    purge_packages,
)
from tests.integration._serving_fixtures import write_mlp

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

GROUPS = {"ctl": ["control"], "srv1": ["serving"], "srv2": ["serving"]}
BARE = "srv2"
"""The serving host with no virtualenv mounted: it installs its own from the wheelhouse."""
MODELS = {"alpha": 11, "beta": 22, "beta-v2": 33}
"""Model folders (seed of their weights): alpha and beta served, beta-v2 the version rolled out."""
GATEWAY_PORT = 8443
METRICS_PORT = 8082
"""The model server's /metrics port (the answers' default)."""
CLIENTS = 6
GRPC_CLIENTS = 2
"""Of the clients, these call over gRPC (one HTTP/2 channel each); the rest over HTTPS/1.1."""
CLIENT_TIMEOUT_S = 5.0
ROWS = np.random.default_rng(5).normal(size=(16, 8)).astype(np.float32) * 3
PURGED = {
    "ctl": "'postgresql*' 'prometheus*' 'nginx*' python3-venv python3.11-venv",
    BARE: "'prometheus*' python3-venv python3.11-venv",
}
"""Purged from the hosts before the first ``up``, which installs them from the bundle's debs."""
INSTALLED = {
    "ctl": [
        "postgresql",
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-node-exporter",
        "nginx",
        "python3-venv",
    ],
    BARE: ["prometheus-node-exporter", "python3-venv"],
}
"""Role packages those hosts install from the bundle (node exporter runs on every host)."""
OFFLINE_TASKS = {
    "Copy the debs the host lacks from the verified bundle",
    "Write the folder's package index",
    "Copy the wheelhouse to the host",
}
"""The tasks that send a host the bundle's debs and wheels: changed on a fresh host alone."""
TARGETS_TASK = "Write each job's targets from the inventory"
"""The monitoring host's one task when a host joins or leaves: Prometheus's targets."""


@dataclass
class ServingLab(ClusterLab):
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    wheels: set[str] = field(default_factory=set)
    """The wheelhouse's files, which the bare host's virtualenv is made from."""
    bundle: Path | None = None
    """The bundle ``up`` installs from (None: the wheelhouse alone, apt not Debian 12's)."""
    cold: bool = False
    """Whether the first ``up`` ran (the ``lab`` fixture)."""

    def write(self, beta: str, members: tuple[str, ...] | None = None) -> None:
        """The answers with ``alpha`` and ``beta`` served, ``beta`` from the model folder named,
        on ``members`` (every host when None)."""
        models = [
            {"name": "alpha", "uri": "/srv/models/alpha"},
            {"name": "beta", "uri": f"/srv/models/{beta}"},
        ]
        self.write_answers(members, models=models)

    def up(self, label: str) -> tuple[int, Any, str]:
        return self.cli("up", label=label)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingLab]:
    """The hosts before any ``up``: the roles' packages purged, the bundle made, the models copied
    to the serving hosts, the answers written."""
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "filesystem"},
        "tls": {"enabled": True},
        "components": {"workbench": False, "controller": False, "dashboards": False},
    }
    started = time.monotonic()
    wheels = resolve_wheelhouse(
        tmp_path_factory.mktemp("wheels") / "wheelhouse", host_requirements(["serving"])
    )
    resolved = time.monotonic() - started
    base["cluster"] = {"wheelhouse": str(wheels)}
    # no route out: the bare host's virtualenv can only come from the wheelhouse the controller sends
    lab_hosts = cluster_lab(
        tmp_path_factory, "serving-cluster", GROUPS, base, ServingLab, internal=True, bare=(BARE,)
    )
    with lab_hosts as lab:
        lab.timings["resolve the serving wheelhouse"] = resolved
        lab.wheels = {w.name for w in wheels.glob("*.whl")}
        if debian_12():
            for host, packages in PURGED.items():
                purge_packages(lab, host, packages)
            lab.bundle = make_bundle(lab, wheels)
            lab.base["cluster"] = {"bundle": str(lab.bundle)}
        for name, seed in MODELS.items():
            folder = write_mlp(lab.work / "models" / name, seed=seed)
            session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
            lab.expected[name] = session.run(None, {"input": ROWS})[0]
        for host in ("srv1", "srv2"):
            subprocess.run(
                ["podman", "cp", str(lab.work / "models"), f"{lab.hosts.hosts[host].name}:/srv/models"],
                check=True,
            )
        lab.write("beta")
        yield lab


@pytest.fixture(scope="module")
def lab(fresh: ServingLab) -> ServingLab:
    """The hosts after the first ``up`` from the bundle (the cold up)."""
    code, _, output = fresh.up("cold up")
    assert code == 0, output
    fresh.cold = True
    return fresh


def _bundle_of(lab: ServingLab) -> Path:
    if lab.bundle is None:
        pytest.skip("the bundle's debs are made by this machine's apt, which must be Debian 12's")
    return lab.bundle


def _written(lab: ServingLab) -> dict[str, str]:
    """What the appliance has written on each host: nothing before the first ``up``."""
    paths = "/var/lib/appliance /var/cache/appliance /etc/appliance-*.env /etc/systemd/system/appliance-*"
    found = {}
    for host in GROUPS:
        done = lab.hosts.ssh(host, f"ls -d {paths} 2>/dev/null || true")
        assert done.returncode == 0, (host, done.stderr)  # an SSH failure would list nothing too
        found[host] = done.stdout.strip()
    return found


def test_the_fresh_hosts_reach_nothing_beyond_and_lack_the_roles_packages(fresh: ServingLab) -> None:
    assert not fresh.cold, "runs before the first up (the file's order)"
    for host in GROUPS:  # what they install can only come from the controller
        assert_no_route_out(fresh, host)
    if fresh.bundle is None:
        return  # nothing purged: the wheelhouse alone (apt not Debian 12's)
    for host, packages in INSTALLED.items():  # purged: up has to install them
        listed = fresh.hosts.ssh(
            host, f"dpkg-query -W -f '${{db:Status-Abbrev}}\\n' {' '.join(packages)} || true"
        )
        assert listed.returncode == 0 and "ii" not in listed.stdout, (host, listed.stdout, listed.stderr)


def test_the_bundle_holds_the_roles_packages_and_their_closure(fresh: ServingLab) -> None:
    bundle = _bundle_of(fresh)
    index = bundle_index(bundle)
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        stream = tar.extractfile("debs/closure.json")
        assert stream is not None
        closure = json.loads(stream.read())
    assert set(closure) >= {p for names in INSTALLED.values() for p in names}, sorted(closure)
    packages = {info["package"] for info in index.values()}
    assert {"postgresql-15", "libpq5", "prometheus", "nginx-common"} <= packages, sorted(packages)
    assert all(f"debs/{name}" in manifest["files"] for name in index), "a deb outside the signed manifest"
    assert manifest["archives"] == {}  # the hosts run no containers


def test_a_tampered_deb_is_refused_before_any_host_changes(fresh: ServingLab) -> None:
    assert not fresh.cold, "runs before the first up (the file's order)"
    bundle = _bundle_of(fresh)
    victim = next(name for name, info in bundle_index(bundle).items() if info["package"] == "postgresql-15")
    tampered = fresh.work / "tampered.tar"
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w") as out:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name == f"debs/{victim}" and data is not None:
                body = bytearray(data.read())
                body[len(body) // 2] ^= 0xFF
                out.addfile(member, io.BytesIO(bytes(body)))
            else:
                out.addfile(member, data)
    fresh.base["cluster"] = {"bundle": str(tampered)}
    fresh.write("beta")
    try:
        code, _, output = fresh.cli("up", label="up with a tampered deb")
    finally:
        fresh.base["cluster"] = {"bundle": str(bundle)}
        fresh.write("beta")
    assert code == 2, output  # a bundle refused, like any refused input
    assert f"debs/{victim}" in output and "tampered" in output, output
    assert _written(fresh) == dict.fromkeys(GROUPS, ""), "the playbook ran on a host"


def test_plan_with_the_bundle_names_what_each_fresh_host_would_get_and_changes_nothing(
    fresh: ServingLab,
) -> None:
    """Check mode on hosts without the roles' packages: the debs each would be sent, the
    wheelhouse for the bare host, and nothing written on any host."""
    assert not fresh.cold, "runs before the first up (the file's order)"
    _bundle_of(fresh)
    code, planned, output = fresh.cli("plan")
    assert code == 0, output[-6000:]
    for host in GROUPS:
        assert planned[host]["failed"] == 0 and planned[host]["unreachable"] == 0, planned
    for host in PURGED:
        assert "Copy the debs the host lacks (planned)" in planned[host]["changed_tasks"], planned[host]
    assert "Copy the wheelhouse to the host" in planned[BARE]["changed_tasks"], planned[BARE]
    # --diff's data: each unit file a host would get, never what a no_log task writes (secrets, envs)
    mlflow = [
        d for d in planned["ctl"]["diffs"] if "+++ after: /etc/systemd/system/appliance-mlflow.service\n" in d
    ]
    assert len(mlflow) == 1 and "\n+ExecStart=" in mlflow[0], planned["ctl"]["diffs"]
    headers = [
        line
        for h in GROUPS
        for d in planned[h]["diffs"]
        for line in d.splitlines()
        if line.startswith("+++ ")
    ]
    assert not [line for line in headers if line.endswith(".env") or "/secrets/" in line], headers
    assert _written(fresh) == dict.fromkeys(GROUPS, ""), "plan wrote on a host"


@dataclass
class Outcome:
    started: float
    ok: bool
    what: str
    protocol: str = "rest"


class Load:
    """Keep-alive clients, each on its own connection through the gateway (HTTPS/1.1, or gRPC on
    one HTTP/2 channel), alternating the two models and checking every answer against what that
    model computes."""

    def __init__(self, lab: ServingLab, beta_versions: tuple[str, ...]) -> None:
        self.lab, self.beta_versions = lab, beta_versions
        self.ca_pem = (lab.state / "secrets" / "tls_ca_cert").read_bytes()
        self.context = ssl.create_default_context(cadata=self.ca_pem.decode())
        self.token = (lab.state / "secrets" / "serving_token").read_text().strip()
        self.address = lab.hosts.hosts["ctl"].address
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(
                target=self._grpc_client if i < GRPC_CLIENTS else self._client, args=(i,), daemon=True
            )
            for i in range(CLIENTS)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 5)

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.address, GATEWAY_PORT, context=self.context, timeout=CLIENT_TIMEOUT_S
        )

    def _client(self, number: int) -> None:
        connection = self._connect()
        turn = number
        while not self.stop.is_set():
            turn += 1
            model, row = ("alpha", "beta")[turn % 2], turn % len(ROWS)
            body = json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": ROWS[row].tolist()}
                    ]
                }
            )
            started = time.monotonic()
            try:
                connection.request(
                    "POST", f"/v2/models/{model}/infer", body,
                    {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
                )  # fmt: skip
                answer = connection.getresponse()
                payload = answer.read()
                ok, what = self._check(model, row, answer.status, payload)
            except (OSError, http.client.HTTPException) as err:
                ok, what = False, f"{type(err).__name__}: {err}"
                connection.close()
                connection = self._connect()
            with self.lock:
                self.outcomes.append(Outcome(started, ok, what))
            time.sleep(LOAD_PACE_S)

    def _grpc_client(self, number: int) -> None:
        credentials = grpc.ssl_channel_credentials(self.ca_pem)
        metadata = (("authorization", f"Bearer {self.token}"),)
        with grpc.secure_channel(f"{self.address}:{GATEWAY_PORT}", credentials) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            turn = number
            while not self.stop.is_set():
                turn += 1
                model, row = ("alpha", "beta")[turn % 2], turn % len(ROWS)
                request = pb.ModelInferRequest(model_name=model)
                request.inputs.add(name="input", datatype="FP32", shape=[1, 8])
                request.raw_input_contents.append(ROWS[row : row + 1].tobytes())
                started = time.monotonic()
                try:
                    reply = stub.ModelInfer(request, metadata=metadata, timeout=CLIENT_TIMEOUT_S)
                    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
                    ok, what = self._matches(model, row, got)
                except grpc.RpcError as err:
                    ok, what = False, f"gRPC {err.code()}: {err.details()}"
                with self.lock:
                    self.outcomes.append(Outcome(started, ok, what, "grpc"))
                time.sleep(LOAD_PACE_S)

    def _check(self, model: str, row: int, status: int, payload: bytes) -> tuple[bool, str]:
        if status != 200:
            return False, f"{status} {payload[:200]!r}"
        (output,) = json.loads(payload)["outputs"]
        return self._matches(model, row, np.asarray(output["data"], dtype=np.float32))

    def _matches(self, model: str, row: int, got: np.ndarray) -> tuple[bool, str]:
        versions = ("alpha",) if model == "alpha" else self.beta_versions
        for version in versions:
            if np.allclose(got, self.lab.expected[version][row], atol=1e-5):
                return True, version
        return False, f"{model} answered {got.tolist()}, no version of it computes that"

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        with self.lock:
            chosen = [o for o in self.outcomes if since <= o.started < until]
        return Counter(o.what if o.ok else "failed" for o in chosen)

    def answered(self, protocol: str, since: float = 0.0) -> int:
        """Requests of ``protocol`` answered right since ``since``."""
        with self.lock:
            return sum(o.ok and o.protocol == protocol and o.started >= since for o in self.outcomes)

    def failures(self) -> list[str]:
        with self.lock:
            return [o.what for o in self.outcomes if not o.ok]

    def failed(self) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if not o.ok]


CLOSED = (
    "SSLEOFError",
    "SSLZeroReturnError",
    "RemoteDisconnected",
    "ConnectionResetError",
    "BrokenPipeError",
)
"""How an HTTPS/1.1 client sees its idle keep-alive connection closed by the gateway's reload:
the request it had just sent got no answer and reached no model server."""


def assert_only_closed_by_the_reload(load: Load, reloads: int) -> None:
    """No request failed but those a gateway reload can fail: nginx's old workers close their
    idle HTTP/1.1 keep-alive connections (HTTP/2 gets GOAWAY, which gRPC clients honour), so an
    HTTPS client sending on one at that instant sees it closed, at most once per client and
    reload. A request sent to a server that was not ready would fail otherwise (a 502, gRPC
    UNAVAILABLE) and fails this."""
    failed = load.failed()
    assert all(o.protocol == "rest" and o.what.startswith(CLOSED) for o in failed), [o.what for o in failed]
    assert len(failed) <= (CLIENTS - GRPC_CLIENTS) * reloads, [o.what for o in failed]


def test_the_bare_serving_host_made_its_virtualenv_from_the_wheelhouse_alone(lab: ServingLab) -> None:
    assert_no_route_out(lab, BARE)  # offline: nothing but the controller's wheels to install from
    assert_venv_made_from(lab, BARE, lab.wheels, foreign={"mlflow", "torch", "psycopg", "jupyterlab"})
    assert lab.hosts.ssh(BARE, f"test -e {ROOT / 'pyproject.toml'}").returncode == 1  # no checkout there
    listed = lab.hosts.ssh(BARE, f"{sys.prefix}/bin/python -c 'import onnxruntime, grpc'")
    assert listed.returncode == 0, listed.stderr  # the model server's own packages


def test_the_roles_packages_came_from_the_bundles_debs_and_their_services_run(lab: ServingLab) -> None:
    assert_installed_from(lab, _bundle_of(lab), INSTALLED)
    code, found, output = lab.run("cluster", "status", "--json")
    assert code == 0, output
    units = json.loads(found)
    for service in ("mlflow", "gateway", "prometheus", "alertmanager"):
        assert units["ctl"][service].startswith("active"), units["ctl"]
    assert all(units[h]["node-exporter"].startswith("active") for h in GROUPS), units
    # PostgreSQL (Debian's unit, from the bundle) holds MLflow's registry
    assert lab.hosts.ssh("ctl", "systemctl is-active postgresql.service").stdout.strip() == "active"


def test_a_new_model_version_rolls_out_one_host_at_a_time_with_no_failed_request(lab: ServingLab) -> None:
    with Load(lab, ("beta", "beta-v2")) as load:
        time.sleep(3)
        assert load.counts()["alpha"] > 0 and load.counts()["beta"] > 0, load.counts()
        lab.write("beta-v2")
        code, result, output = lab.up("rolling up")
        time.sleep(2)
    assert code == 0, output
    assert result["srv1"]["changed"] > 0 and result["srv2"]["changed"] > 0, result
    # the bundle's debs and wheels were all there already: nothing of them is sent again
    for host, outcome in result.items():
        assert not OFFLINE_TASKS & set(outcome["changed_tasks"]), (host, outcome["changed_tasks"])
    counts = load.counts()
    print(f"\nrolling update under load: {dict(counts)} in {lab.timings['rolling up #1']:.0f} s")
    assert load.failures() == [], (counts, load.failures()[:5])
    assert counts["alpha"] > 100 and counts["beta"] + counts["beta-v2"] > 100, counts
    assert load.answered("grpc") > 100 and load.answered("rest") > 100
    # Both serving hosts serve the new version now; alpha stayed alpha throughout.
    with Load(lab, ("beta-v2",)) as after:
        time.sleep(3)
    assert after.failures() == [] and after.counts()["beta-v2"] > 10, after.counts()


def _served_on(lab: ServingLab, host: str) -> float:
    """Inference requests ``host``'s model server has answered since it started, from its own
    /metrics (open, as every scrape target of the stack is)."""
    url = f"http://{lab.hosts.hosts[host].address}:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("appliance_inference_requests_total{")
    )


def _members(lab: ServingLab) -> str:
    done = lab.hosts.ssh("ctl", "cat /var/lib/appliance/config/gateway/serving_rest.members")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_serving_host_leaves_the_gateway_drained_and_joins_again_only_once_ready(lab: ServingLab) -> None:
    """srv2 taken out of the answers under load: the next up takes it out of the gateway, drains
    and stops it, and touches nothing else; put back, it joins the gateway once it is ready and
    takes its share of the requests. No request is sent to a server that is not ready or gone;
    the one thing that can fail is an HTTPS/1.1 request sent on an idle keep-alive connection at
    the instant the gateway reloads (``assert_only_closed_by_the_reload``)."""
    address = lab.hosts.hosts[BARE].address
    with Load(lab, ("beta-v2",)) as load:
        time.sleep(3)
        lab.write("beta-v2", members=("ctl", "srv1"))
        code, result, output = lab.up("up without srv2")
        time.sleep(2)
    assert code == 0, output
    print(f"\nsrv2 leaving under load: {dict(load.counts())}")
    assert_only_closed_by_the_reload(load, reloads=1)  # the drain role's, before srv2 stops
    assert result[BARE]["state"] == "changed", result
    assert result["srv1"]["changed"] == 0, result  # nothing else: ctl's one change is Prometheus's targets
    assert result["ctl"]["changed_tasks"] == [TARGETS_TASK], result["ctl"]
    assert f"server {address}:" not in _members(lab)
    state = lab.hosts.ssh(BARE, "systemctl is-active appliance-serving").stdout.strip()
    assert state == "inactive", state
    with Load(lab, ("beta-v2",)) as load:
        time.sleep(3)
        lab.write("beta-v2")
        code, result, output = lab.up("up with srv2 again")
        joined = time.monotonic()
        time.sleep(5)
    assert code == 0, output
    print(f"\nsrv2 joining under load: {dict(load.counts())}")
    assert_only_closed_by_the_reload(load, reloads=1)  # the gateway role's, once srv2 is ready
    assert result[BARE]["changed"] > 0 and result["srv1"]["changed"] == 0, result
    # the gateway reads its members again, and the run says so: no restart of nginx
    assert "Reload gateway" in result["ctl"]["changed_tasks"], result["ctl"]
    assert "Restart gateway" not in result["ctl"]["changed_tasks"], result["ctl"]
    assert f"server {address}:" in _members(lab)
    assert load.counts(since=joined)["beta-v2"] > 10, load.counts(since=joined)
    assert _served_on(lab, BARE) > 10  # the gateway sends it requests again


def test_a_killed_serving_host_is_left_alone_after_the_fail_window(lab: ServingLab) -> None:
    window = UPSTREAM_IDLE_S + CONNECT_TIMEOUT_S + 1
    assert window <= FAIL_TIMEOUT_S + CONNECT_TIMEOUT_S
    with Load(lab, ("beta-v2",)) as load:
        time.sleep(3)
        killed = time.monotonic()
        subprocess.run(["podman", "kill", lab.hosts.hosts["srv2"].name], check=True, capture_output=True)
        time.sleep(window + 15)
    before = load.counts(until=killed + window)
    after = load.counts(since=killed + window)
    print(f"\nkilled srv2: before the fail window {dict(before)}, after it {dict(after)}")
    assert after["failed"] == 0, (after, load.failures()[:5])
    assert after["alpha"] > 50 and after["beta-v2"] > 50, after  # srv1 carries both models
    assert load.answered("grpc", since=killed + window) > 20, "no gRPC call answered after the window"
    # What failed was in flight on the killed host: at most one request per client.
    assert before["failed"] <= CLIENTS, (before, load.failures())

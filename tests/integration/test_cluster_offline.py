"""`cluster up` with every host offline: Debian packages from the bundle's debs, the virtualenv
from its wheelhouse.

Two hosts (control: MLflow on PostgreSQL; monitoring and gateway: Prometheus, Alertmanager and
the TLS gateway in front of MLflow; node exporter on both) on a podman network with no route out,
the roles' packages purged from them first (the host image carries them). The bundle is made once
by the real CLI on this Debian 12 machine (its apt downloads the roles' packages and their
closure), with a wheelhouse of what the monitoring host's services need: the appliance alone
(Prometheus, Alertmanager and nginx are Debian's). Proved: the hosts cannot reach the network; a
bundle with one altered deb is refused, naming the file, before any host changes; `cluster up`
brings both hosts to healthy with the packages at the bundle's versions and MLflow answering
through the gateway, the monitoring host's virtualenv made from the bundle's wheels alone (no
checkout or virtualenv is mounted there) and holding no other host's packages; a second `up`
changes nothing. `plan` with the bundle, before, names the debs and wheels each fresh host would get
and writes nothing. The control host runs the checkout's virtualenv, mounted read-only (MLflow's
wheels and their closure are too slow to copy and install here on every run): its requirements
are found installed, which the wheelhouse step accepts without writing."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.cluster.requirements import host_requirements, resolve_wheelhouse
from tests.integration._cluster_lab import (
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

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

GROUPS = {"ctl": ["control"], "mon": ["monitoring", "gateway"]}
INSTALLED = {
    "ctl": ["postgresql", "prometheus-node-exporter", "python3-venv"],
    "mon": ["prometheus", "prometheus-alertmanager", "nginx", "python3-venv"],
}
"""Role packages each host installs from the bundle (node exporter runs on every host)."""
PURGED = "'postgresql*' 'prometheus*' 'nginx*' python3-venv python3.11-venv"
BARE = "mon"
"""The host with no virtualenv mounted: it installs its own from the bundle's wheelhouse."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    if not debian_12():
        pytest.skip("the bundle's debs are made by this machine's apt, which must be Debian 12's")
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "filesystem"},
        "tls": {"enabled": True},  # the TLS gateway (nginx, from the bundle) in front of MLflow
        "components": {"workbench": False, "controller": False, "dashboards": False, "serving": False},
    }
    with cluster_lab(tmp_path_factory, "offline-cluster", GROUPS, base, internal=True, bare=(BARE,)) as lab:
        for host in GROUPS:
            purge_packages(lab, host, PURGED)
        yield lab


@pytest.fixture(scope="module")
def bundle(lab: ClusterLab) -> Path:
    """The bundle with debs and the monitoring host's wheels, made once by `appliance bundle
    create` (a cluster answers file: debs on by default, no images)."""
    wheels = resolve_wheelhouse(lab.work / "wheelhouse", host_requirements(["prometheus", "alertmanager"]))
    return make_bundle(lab, wheels)


def _use_bundle(lab: ClusterLab, bundle: Path) -> None:
    lab.base["cluster"] = {"bundle": str(bundle)}
    lab.write_answers()


def test_the_hosts_reach_each_other_and_nothing_beyond(lab: ClusterLab) -> None:
    for host in GROUPS:
        assert_no_route_out(lab, host)
        gone = lab.hosts.ssh(host, "dpkg-query -W -f '${db:Status-Abbrev}' postgresql prometheus || true")
        assert "ii" not in gone.stdout, gone.stdout  # purged: up has to install them
    # but they reach each other (the gateway on mon dials MLflow on ctl): ctl's SSH port from mon
    near = (
        f"import socket; socket.create_connection(('{lab.address('ctl')}', 22), timeout=5); print('reached')"
    )
    done = lab.hosts.ssh("mon", f'python3 -c "{near}"')
    assert done.returncode == 0 and "reached" in done.stdout, done.stderr


def test_bundle_holds_the_roles_packages_and_their_closure(bundle: Path) -> None:
    index = bundle_index(bundle)
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        stream = tar.extractfile("debs/closure.json")
        assert stream is not None
        closure = json.loads(stream.read())
    assert set(closure) >= {p for names in INSTALLED.values() for p in names} | {"nginx"}
    packages = {info["package"] for info in index.values()}
    assert {"postgresql-15", "libpq5", "prometheus", "nginx-common"} <= packages, sorted(packages)
    assert all(f"debs/{name}" in manifest["files"] for name in index), "a deb outside the signed manifest"
    assert manifest["archives"] == {}  # the hosts run no containers


def test_a_tampered_deb_is_refused_before_any_host_changes(lab: ClusterLab, bundle: Path) -> None:
    index = bundle_index(bundle)
    victim = next(name for name, info in index.items() if info["package"] == "postgresql-15")
    tampered = lab.work / "tampered.tar"
    with tarfile.open(bundle) as src, tarfile.open(tampered, "w") as out:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name == f"debs/{victim}" and data is not None:
                body = bytearray(data.read())
                body[len(body) // 2] ^= 0xFF
                out.addfile(member, io.BytesIO(bytes(body)))
            else:
                out.addfile(member, data)
    _use_bundle(lab, tampered)
    code, _, output = lab.cli("up")
    assert code == 2, output  # a bundle refused, like any refused input
    assert f"debs/{victim}" in output and "tampered" in output, output
    for host in GROUPS:  # the playbook never ran: no host has the state folder yet
        done = lab.hosts.ssh(host, "test -e /var/lib/appliance && echo present || echo absent")
        assert done.stdout.strip() == "absent", (host, done.stdout)


def test_plan_with_the_bundle_names_what_each_fresh_host_would_get_and_changes_nothing(
    lab: ClusterLab, bundle: Path
) -> None:
    """Check mode on hosts with none of the roles' packages: the debs each would be sent, the
    wheelhouse for the bare host, and nothing written on any host."""
    _use_bundle(lab, bundle)
    code, planned, output = lab.cli("plan")
    assert code == 0, output[-6000:]
    for host in GROUPS:
        assert planned[host]["failed"] == 0 and planned[host]["unreachable"] == 0, planned
        sent = "Copy the debs the host lacks (planned)"
        assert sent in planned[host]["changed_tasks"], planned
    assert "Copy the wheelhouse to the host" in planned[BARE]["changed_tasks"], planned
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
    written = "/var/lib/appliance /var/cache/appliance /etc/appliance-*.env /etc/systemd/system/appliance-*"
    for host in GROUPS:
        done = lab.hosts.ssh(host, f"ls -d {written} 2>/dev/null || true")
        assert done.stdout.strip() == "", (host, done.stdout)


def test_up_installs_from_the_bundle_and_brings_both_hosts_to_healthy(lab: ClusterLab, bundle: Path) -> None:
    _use_bundle(lab, bundle)
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert set(result) == set(GROUPS) and all(r["state"] == "changed" for r in result.values()), result
    assert_installed_from(lab, bundle, INSTALLED)
    _the_bare_host_runs_the_bundles_wheels(lab, bundle)
    code, found, output = lab.run("cluster", "status", "--json")
    assert code == 0, output
    units = json.loads(found)
    assert units["ctl"]["mlflow"].startswith("active"), units
    assert units["mon"]["prometheus"].startswith("active") and units["mon"]["alertmanager"].startswith(
        "active"
    )
    assert all(units[h]["node-exporter"].startswith("active") for h in GROUPS), units
    assert units["mon"]["gateway"].startswith("active"), units
    ca = lab.state / "secrets" / "tls_ca_cert"
    health = httpx.get(f"https://{lab.address('mon')}:5443/health", verify=str(ca), timeout=30)
    assert health.status_code == 200 and health.text.strip() == "OK", health.text  # MLflow on ctl


def _the_bare_host_runs_the_bundles_wheels(lab: ClusterLab, bundle: Path) -> None:
    """The monitoring host's virtualenv: made on the host from the bundle's wheels alone, and
    nothing of another host's services."""
    with tarfile.open(bundle) as tar:
        wheels = {Path(n).name for n in tar.getnames() if n.startswith("wheelhouse/") and n.endswith(".whl")}
    assert_venv_made_from(lab, BARE, wheels, foreign={"mlflow", "onnxruntime", "torch", "psycopg"})


def test_a_second_up_changes_nothing(lab: ClusterLab) -> None:
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert {h: r["changed"] for h, r in result.items()} == {h: 0 for h in GROUPS}, result

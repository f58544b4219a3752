"""SeaweedFS spread over two storage hosts with replication 2, through the real CLI, Ansible, SSH
and SeaweedFS: the control host runs master, filer and S3 gateway, each storage host a volume
server; objects written through S3 with the generated writer key are kept on both storage hosts;
volume servers whose environment drifted are restored and restarted by the next up, one storage
host at a time, while every object reads, and nothing else changes on any host; with one storage
host stopped every object reads back byte-identical; that host back with an empty disk gets every
copy again from the next up (SeaweedFS's volume.fix.replication).

Hosts are podman containers running systemd (tests/integration/_cluster_hosts.py), three of them,
from the cached host image; `pytest tests/integration/test_cluster_storage.py -s` prints the timings."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration._cluster_hosts import _wait_for_ssh
from tests.integration._cluster_lab import ClusterLab, cluster_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

GROUPS = {"ctl": ["control"], "sto1": ["storage"], "sto2": ["storage"]}
OBJECTS = 24
MASTER, VOLUME, S3 = 9333, 8334, 8333


@dataclass
class StorageLab(ClusterLab):
    written: dict[str, str] = field(default_factory=dict)  # key -> sha256 of what was written

    def s3(self, retries: dict[str, Any] | None = None) -> Any:
        """A boto3 client of the control host's S3 gateway with the generated writer key
        (``retries``: botocore's retry settings, one retry by default)."""
        import boto3
        from botocore.config import Config

        secret = (self.state / "secrets" / "seaweedfs_writer_secret_key").read_text().strip()
        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.address('ctl')}:{S3}",
            aws_access_key_id="appliance-writer",
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(retries=retries or {"max_attempts": 1}, connect_timeout=10, read_timeout=60),
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageLab]:
    base = {
        "profile": "custom",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "seaweedfs", "replication": 2},
        "components": dict.fromkeys(
            ("mlflow", "workbench", "monitoring", "serving", "controller", "dashboards"), False
        ),
    }
    with cluster_lab(tmp_path_factory, "cluster-storage", GROUPS, base, StorageLab) as lab:
        yield lab


def _get_on(lab: StorageLab, host: str, url: str) -> dict[str, Any]:
    """``url`` fetched on ``host``: the store's HTTP admin handlers answer the cluster's hosts
    alone (the guard's white list), not this machine."""
    fetch = (
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    done = lab.hosts.ssh(host, f"python3 -c '{fetch}' '{url}'")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _volume_servers(lab: StorageLab) -> list[str]:
    status = _get_on(lab, "ctl", f"http://{lab.address('ctl')}:{MASTER}/dir/status")
    return sorted(
        node["Url"]
        for centre in status["Topology"]["DataCenters"] or []
        for rack in centre["Racks"] or []
        for node in rack["DataNodes"] or []
    )


def _units_on(lab: StorageLab, host: str) -> list[str]:
    done = lab.hosts.ssh(host, "ls /etc/systemd/system/ | grep '^appliance-' || true")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_up_puts_the_volume_servers_on_the_storage_hosts_and_the_rest_on_the_control_host(
    lab: StorageLab,
) -> None:
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
    assert _units_on(lab, "ctl") == ["appliance-buckets.service", "appliance-seaweedfs.service"]
    for host in ("sto1", "sto2"):
        assert _units_on(lab, host) == ["appliance-seaweedfs-volume.service"]
        env = lab.hosts.ssh(host, "stat -c '%a %U' /etc/appliance-seaweedfs-volume.env").stdout.strip()
        assert env == "600 root"
    # up returned once the store was ready: the master already lists both storage hosts' servers
    assert _volume_servers(lab) == sorted(f"{lab.address(h)}:{VOLUME}" for h in ("sto1", "sto2"))
    server = lab.hosts.ssh("ctl", "systemctl show -p ExecStart appliance-seaweedfs.service").stdout
    assert "-volume=false" in server and "-master.defaultReplication=001" in server
    assert f"-ip={lab.address('ctl')}" in server


def test_objects_written_through_s3_are_kept_on_both_storage_hosts(lab: StorageLab) -> None:
    s3 = lab.s3()
    started = time.monotonic()
    for index in range(OBJECTS):
        body = os.urandom(1024 * (1 + index * 37 % 300))  # 1 KiB .. 300 KiB
        key = f"replicated/{index:03d}.bin"
        s3.put_object(Bucket="datasets", Key=key, Body=body)
        lab.written[key] = hashlib.sha256(body).hexdigest()
    lab.timings["write objects"] = time.monotonic() - started
    # every volume holding data is on both volume servers, with SeaweedFS's placement 001
    holding: dict[str, set[int]] = {}
    for host in ("sto1", "sto2"):
        status = _get_on(lab, host, f"http://{lab.address(host)}:{VOLUME}/status")
        volumes = [v for v in status["Volumes"] or [] if v["FileCount"] > 0]
        assert volumes and all(v["ReplicaPlacement"].get("node") == 1 for v in volumes), status
        holding[host] = {int(v["Id"]) for v in volumes}
    assert holding["sto1"] == holding["sto2"], holding


def test_the_store_refuses_grpc_without_its_certificate_and_admin_http_from_outside_the_cluster(
    lab: StorageLab, tmp_path: Path
) -> None:
    """From this machine, not a cluster host: ``weed shell`` without the store's client
    certificate gets nothing from the master's gRPC (mutual TLS), and the master's HTTP admin
    handler deleting a bucket's collection answers a refusal (the guard's white list); every
    object still reads back. On the control host the shell the role runs (its unit's
    ``-config_dir``, holding the client certificate) lists the bucket's collection."""
    env = {**os.environ, "HOME": str(tmp_path)}  # no ~/.seaweedfs/security.toml either
    weed = str(Path(sys.prefix) / "bin" / "weed")
    try:
        shell = subprocess.run(
            [weed, "shell", f"-master={lab.address('ctl')}:{MASTER}"],
            input="collection.list\n", capture_output=True, text=True, cwd=tmp_path, env=env, timeout=15,
        )  # fmt: skip
        listed = shell.stdout
    except subprocess.TimeoutExpired as waited:  # it keeps retrying the handshake the master refuses
        listed = waited.stdout.decode() if isinstance(waited.stdout, bytes) else waited.stdout or ""
    assert "datasets" not in listed and "collections" not in listed, listed
    refused = None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(f"http://{lab.address('ctl')}:{MASTER}/col/delete?collection=datasets", timeout=10)
    except urllib.error.HTTPError as err:
        refused = err.code
    assert refused == 401, refused

    server = lab.hosts.ssh("ctl", "systemctl show -p ExecStart appliance-seaweedfs.service").stdout
    own = re.search(r"(\S+/weed) (-config_dir=\S+)", server)
    assert own, server
    inside = lab.hosts.ssh(
        "ctl", f"echo collection.list | {own[1]} {own[2]} shell -master={lab.address('ctl')}:{MASTER}"
    )
    assert re.search(r'collection:\s*"?datasets\b', inside.stdout), inside.stdout + inside.stderr

    s3 = lab.s3()
    read = {
        key: hashlib.sha256(s3.get_object(Bucket="datasets", Key=key)["Body"].read()).hexdigest()
        for key in lab.written
    }
    assert read == lab.written


def _unit_times(lab: StorageLab, host: str) -> dict[str, int]:
    """When the host's volume server last stopped and last started, on the kernel's monotonic clock
    (in microseconds), which every container host shares with this machine."""
    keys = ("InactiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic")
    shown = lab.hosts.ssh(
        host, f"systemctl show {' '.join('-p ' + k for k in keys)} appliance-seaweedfs-volume"
    )
    assert shown.returncode == 0, shown.stderr
    return {k: int(v) for k, v in (line.split("=", 1) for line in shown.stdout.split())}


def test_changed_volume_servers_restart_one_storage_host_at_a_time_and_every_read_succeeds(
    lab: StorageLab,
) -> None:
    """Each storage host's volume server environment drifts (as a new bundle or configuration
    changes it): the next up changes that file and restarts that server and nothing else on any
    host (the rest of the cluster's tasks are idempotent: the control host reports no change,
    the count of the store's copies included), and restarts both one host at a time, the second stopped
    only after the first was back and listed by the master, while a reader reads every object
    through S3 all along, each read tried once, without one failure. Between the first host's
    start and the second's stop lie the first's health check, the master's listing and the next
    batch's tasks, several SSH round trips; restarts in parallel stop both at once."""
    assert len(lab.written) == OBJECTS, "the objects are written by the test before"
    before = {h: _unit_times(lab, h) for h in ("sto1", "sto2")}
    for host in ("sto1", "sto2"):
        drift = lab.hosts.ssh(host, "echo '# drifted' >> /etc/appliance-seaweedfs-volume.env")
        assert drift.returncode == 0, drift.stderr
    reads, failures = [0], []
    done = threading.Event()

    def read_all_along() -> None:
        s3 = lab.s3({"total_max_attempts": 1})  # a failed read is not hidden by a retry
        while not done.is_set():
            for key, digest in lab.written.items():
                try:
                    body = s3.get_object(Bucket="datasets", Key=key)["Body"].read()
                    if hashlib.sha256(body).hexdigest() != digest:
                        failures.append(f"{key}: other bytes")
                    reads[0] += 1
                except Exception as err:  # every failure is the finding
                    failures.append(f"{key}: {err}")

    reader = threading.Thread(target=read_all_along, daemon=True)
    reader.start()
    try:
        code, result, output = lab.cli("up", label="up restarting the volume servers")
    finally:
        done.set()
        reader.join(120)
    assert not reader.is_alive(), "a read outlived the up by two minutes"
    assert code == 0, output[-6000:]
    assert result["ctl"]["changed"] == 0, result
    restored = {"Write each unit's environment (0600, read by systemd)", "Restart seaweedfs-volume"}
    for host in ("sto1", "sto2"):
        assert set(result[host]["changed_tasks"]) == restored, (host, result[host])
    after = {h: _unit_times(lab, h) for h in ("sto1", "sto2")}
    started = {h: after[h]["ExecMainStartTimestampMonotonic"] for h in after}
    stopped = {h: after[h]["InactiveEnterTimestampMonotonic"] for h in after}
    assert all(started[h] > before[h]["ExecMainStartTimestampMonotonic"] for h in after), (before, after)
    first, second = sorted(after, key=lambda h: stopped[h])
    gap = (stopped[second] - started[first]) / 1e6
    assert gap >= 1.0, f"{second} stopped {gap:.2f} s after {first} started again: {after}"
    assert not failures and reads[0] >= OBJECTS, (reads, failures[:5])
    assert _volume_servers(lab) == sorted(f"{lab.address(h)}:{VOLUME}" for h in ("sto1", "sto2"))


def test_with_one_storage_host_stopped_every_object_reads_back_byte_identical(lab: StorageLab) -> None:
    assert len(lab.written) == OBJECTS, "the objects are written by the test before"
    subprocess.run(["podman", "stop", "--time", "10", lab.hosts.hosts["sto2"].name], check=True, timeout=120)
    s3 = lab.s3()
    started = time.monotonic()
    read = {
        key: hashlib.sha256(s3.get_object(Bucket="datasets", Key=key)["Body"].read()).hexdigest()
        for key in lab.written
    }
    lab.timings["read objects, one storage host stopped"] = time.monotonic() - started
    assert read == lab.written
    listed = s3.list_objects_v2(Bucket="datasets", Prefix="replicated/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(lab.written)


def _podman_address(name: str) -> str:
    done = subprocess.run(
        ["podman", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_storage_host_back_with_an_empty_disk_gets_every_copy_again_from_the_next_up(
    lab: StorageLab,
) -> None:
    """sto2 comes back with its volume folder emptied (a replaced disk): the next up has SeaweedFS
    copy every volume back to it (volume.fix.replication): it holds every volume sto1 holds
    again, which it can only have by a copy. (On a store with every copy in place the repair
    changes nothing: the rolling up above counts the copies with no change on the control host.)"""
    sto2 = lab.hosts.hosts["sto2"].name
    subprocess.run(["podman", "start", sto2], capture_output=True, check=True, timeout=120)
    address = _podman_address(sto2)
    if address != lab.hosts.hosts["sto2"].address:  # podman may lease it another address
        lab.hosts.hosts["sto2"].address = address
        lab.write_answers()
    _wait_for_ssh(lab.hosts, "sto2")
    emptied = lab.hosts.ssh(
        "sto2",
        "systemctl stop appliance-seaweedfs-volume && rm -rf /var/lib/appliance/seaweedfs-volume/* "
        "&& systemctl start appliance-seaweedfs-volume",
    )
    assert emptied.returncode == 0, emptied.stderr
    code, result, output = lab.cli("up", label="up copying the volumes back")
    assert code == 0, output[-6000:]
    assert "Copy them back from the volume servers that hold them" in result["ctl"]["changed_tasks"], result
    holding = {
        host: {
            int(v["Id"])
            for v in _get_on(lab, host, f"http://{lab.address(host)}:{VOLUME}/status")["Volumes"] or []
        }
        for host in ("sto1", "sto2")
    }
    assert holding["sto2"] and holding["sto1"] == holding["sto2"], holding

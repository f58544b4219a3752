"""A host stopped in the middle of ``cluster up`` (control ``ctl`` + serving ``srv1``, the
filesystem store, components trimmed as in test_cluster_two_hosts.py): the run ends non-zero with
``srv1`` unreachable in its per-host results and ``ctl`` not failed; once ``srv1`` is back, the next
``up`` completes every play the interrupted one left (the serving play runs one host at a time, so
the lost host ends the run before monitoring and the gateway), every host is healthy, and a third
``up`` changes nothing. The hosts are podman containers running systemd (_cluster_hosts.py)."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration._cluster_hosts import _wait_for_ssh
from tests.integration._cluster_lab import ClusterLab, cluster_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

GROUPS = {"ctl": ["control"], "srv1": ["serving"]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "filesystem"},
        "components": {"workbench": False, "controller": False, "dashboards": False},
    }
    with cluster_lab(tmp_path_factory, "cluster-interrupted", GROUPS, base) as lab:
        yield lab


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120, check=False)


def _serving_play_begun(lab: ClusterLab) -> bool:
    """The serving play has started on srv1: its state folder exists (no earlier play touches srv1
    beyond gathering facts). Asked through podman, not SSH, to keep the poll cheap."""
    done = _podman("exec", lab.hosts.hosts["srv1"].name, "test", "-d", "/var/lib/appliance")
    return done.returncode == 0


def test_a_host_stopped_mid_up_is_reported_unreachable_and_the_next_up_completes(lab: ClusterLab) -> None:
    srv1 = lab.hosts.hosts["srv1"].name
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(lab.cli, "up")
        deadline = time.monotonic() + 300
        while not _serving_play_begun(lab) and not first.done() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not first.done(), f"up ended before the serving play began: {first.result()[2][-3000:]}"
        assert _serving_play_begun(lab), "the serving play did not begin on srv1 within 300 s"
        stopped = time.monotonic()
        done = _podman("stop", "--time", "5", srv1)
        assert done.returncode == 0, done.stderr
        code, result, output = first.result(timeout=600)
    lab.timings["stop to the end of the interrupted up"] = time.monotonic() - stopped
    assert code == 4, output  # a host could not be reached
    assert result is not None, output  # the per-host results are still printed as data
    assert result["srv1"]["state"] == "unreachable" and result["srv1"]["messages"], result
    assert result["ctl"]["failed"] == 0 and result["ctl"]["unreachable"] == 0, result
    assert "srv1: unreachable" in output, output  # the message names the host
    # The serving play stopped at the lost host: the plays after it never ran on ctl.
    assert "appliance-prometheus.service" not in lab.hosts.ssh("ctl", "ls /etc/systemd/system/").stdout

    done = _podman("start", srv1)
    assert done.returncode == 0, done.stderr
    # podman may give the restarted container another address on its network (a host coming back
    # from DHCP with a new lease does the same): its inventory line follows it.
    address = _podman(
        "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", srv1
    ).stdout.strip()
    if address != lab.hosts.hosts["srv1"].address:
        print(f"\nsrv1 came back at {address} (was {lab.hosts.hosts['srv1'].address})")
        lab.hosts.hosts["srv1"].address = address
        lab.write_answers()
    _wait_for_ssh(lab.hosts, "srv1")
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
    assert result["ctl"]["changed"] > 0, result  # the plays the first up never reached
    code, status, output = lab.cli("status")
    assert code == 0, output
    assert status["ctl"] and all(s.startswith("active") for s in status["ctl"].values()), status
    assert status["srv1"] == {"serving": "active (running)", "node-exporter": "active (running)"}, status
    assert "prometheus" in status["ctl"], status

    code, result, output = lab.cli("up")
    assert code == 0, output
    assert {h: r["changed"] for h, r in result.items()} == {"ctl": 0, "srv1": 0}, result

"""The wizard's install screen over the real backend: ``cluster preflight`` through the cluster
engine, Ansible and SSH against one host container (tests/integration/_cluster_hosts.py) and one
address nobody answers at, each shown on its own row.

Preflight names the unreachable host, so the install stops before ``cluster up`` (no service is
installed); the reachable host's row ends ``ok`` with the counts of the tasks that ran there.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.answers_file import parse_answers
from tests.integration._cluster_hosts import ClusterHosts, cluster_hosts
from tui.app import ApplianceApp
from tui.backend import Backend
from tui.state import WizardState
from tui.widgets.host_progress import HostProgress

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHosts]:
    with cluster_hosts(("box1",), tmp_path_factory.mktemp("tui-cluster")) as hosts:
        yield hosts


async def test_install_shows_preflight_per_host_and_stops_before_up(
    host: ClusterHosts, tmp_path: Path
) -> None:
    address = host.hosts["box1"].address
    # the same /24 as the host, an address no container has: SSH cannot connect
    nobody = str(ipaddress.ip_interface(f"{address}/24").network.network_address + 250)
    answers = Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "components": {"workbench": False, "controller": False, "dashboards": False},
            "cluster": {
                "ssh_key": str(host.key),
                "venv": sys.prefix,  # mounted read-only at the same path on the host
                "hosts": [
                    {"name": "box1", "address": address, "groups": ["control"]},
                    {"name": "gone1", "address": nobody, "groups": ["serving"]},
                ],
            },
        }
    )
    out = tmp_path / "appliance.yaml"
    state = WizardState(initial=answers, answers_out=out, state_dir=tmp_path / "state")
    app = ApplianceApp(state, Backend(), refresh_seconds=0)
    started = time.monotonic()
    async with app.run_test(size=(100, 30)) as pilot:
        app.goto("install")
        deadline = time.monotonic() + 300
        while not any(not b.disabled for b in app.screen.query("#resume")) and time.monotonic() < deadline:
            await pilot.pause(0.1)
        table = app.screen.query_one(HostProgress)
        current = str(app.screen.query_one("#current").render())
        rows = {h: table.get_row(h) for h in ("box1", "gone1")}
        tallies = dict(table.tallies)
        resumable = not app.screen.query_one("#resume").disabled
    print(f"\nTUI cluster preflight, one host and one unreachable: {time.monotonic() - started:.1f} s")
    assert current.startswith("FAILED: preflight failed"), current
    assert rows["gone1"][1] == "unreachable", rows
    assert tallies["gone1"].task, "the unreachable host's row carries Ansible's message"
    assert rows["box1"][1] == "ok", rows
    assert tallies["box1"].ok >= 3 and tallies["box1"].failed == 0, tallies["box1"]
    assert resumable
    assert app.cluster_results == {}  # up never ran
    assert parse_answers(out.read_text(), str(out)).cluster == answers.cluster
    listed = host.ssh("box1", "ls /etc/systemd/system/ | grep '^appliance-' || true")
    assert listed.returncode == 0 and listed.stdout == "", listed

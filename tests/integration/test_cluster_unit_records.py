"""The roles' units machinery (roles/appliance_common/tasks/units.yml) on a real host, a podman
container running systemd reached over SSH: a run that writes a unit's new files and ends before
restarting it (``appliance_common_units_start: false``, as the storage play leaves its volume
servers for the next play; an interrupted or failed ``up`` leaves the same) leaves the service on
the old ones, and the next run restarts it, or reloads it when only files it reads again on a
reload changed, though that run writes nothing new; a run after it changes nothing.

The unit is a small HTTP server of the test's own that says what it read: its PID, an environment
variable, a file read at its start, and a file it reads again on SIGHUP."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.cluster.run import ansible_env
from tests.integration._cluster_hosts import ClusterHosts, cluster_hosts
from tests.unit.test_cluster_roles import _tool

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

STATE = "/var/lib/appliance"
PORT = 18999
SERVER = """\
import http.server, json, os, signal, sys
from pathlib import Path

here = Path(sys.argv[1])
read = {"setting": (here / "setting.txt").read_text(), "guard": (here / "guard.txt").read_text()}


def reload(*_):
    read["guard"] = (here / "guard.txt").read_text()


signal.signal(signal.SIGHUP, reload)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(read | {"pid": os.getpid(), "probe": os.environ.get("PROBE")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
""".replace("PORT", str(PORT))

PLAYBOOK = [
    {
        "hosts": "node",
        "gather_facts": False,
        "tasks": [
            {"name": "The service account", "ansible.builtin.group": {"name": "appliance", "system": True}},
            {
                "name": "The service account's user",
                "ansible.builtin.user": {"name": "appliance", "group": "appliance", "system": True},
            },
            {
                "name": "The state folders",
                "ansible.builtin.file": {"path": "{{ item }}", "state": "directory", "owner": "appliance"},
                "loop": [STATE, f"{STATE}/config"],
            },
            {
                "name": "The probe's unit",
                "ansible.builtin.include_role": {"name": "appliance_common", "tasks_from": "units"},
                "vars": {
                    "appliance_common_units": "{{ probe_units }}",
                    "appliance_common_units_start": "{{ start }}",
                },
            },
        ],
    }
]


def _unit(probe: str, setting: str, guard: str) -> dict[str, Any]:
    folder = f"{STATE}/config/probe"
    return {
        "name": "probe",
        "description": "the units machinery's probe",
        "command": ["/usr/bin/python3", f"{folder}/serve.py", folder],
        "env": {"PROBE": probe},
        "files": [
            {"key": "serve.py", "value": SERVER},
            {"key": "setting.txt", "value": setting},
            {"key": "guard.txt", "value": guard, "reload": True},
        ],
        "health": {"url": f"http://127.0.0.1:{PORT}/"},
    }


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterHosts, Path]]:
    work = tmp_path_factory.mktemp("unit-records")
    with cluster_hosts(("node",), work) as hosts:
        yield hosts, work


def _up(node: tuple[ClusterHosts, Path], start: bool, **unit: str) -> int:
    """The playbook with the probe unit as given; the run's count of changed tasks."""
    hosts, work = node
    inventory = work / "hosts.yml"
    host = {
        "ansible_host": hosts.hosts["node"].address, "ansible_user": "root",
        "ansible_ssh_private_key_file": str(hosts.key), "ansible_python_interpreter": "/usr/bin/python3",
    }  # fmt: skip
    inventory.write_text(json.dumps({"all": {"hosts": {"node": host}}}))
    (work / "playbook.yml").write_text(json.dumps(PLAYBOOK))
    (work / "vars.json").write_text(json.dumps({"probe_units": [_unit(**unit)], "start": start}))
    done = subprocess.run(
        [
            _tool("ansible-playbook"), "-i", str(inventory), "-e", f"@{work / 'vars.json'}",
            str(work / "playbook.yml"),
        ],
        env=ansible_env(work, mitogen=False),  # the roles of this checkout (ANSIBLE_ROLES_PATH)
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    recap = re.search(r"node\s*:\s*ok=\d+\s+changed=(\d+)", done.stdout)
    assert recap, done.stdout[-2000:]
    return int(recap.group(1))


def _read(node: tuple[ClusterHosts, Path]) -> dict[str, Any]:
    """What the probe's running service read, asked on the host."""
    hosts, _ = node
    url = f"http://127.0.0.1:{PORT}/"
    ask = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=10).read().decode())"
    done = hosts.ssh("node", f'python3 -c "{ask}"')
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_unit_written_but_not_restarted_restarts_on_the_next_run_then_nothing_changes(
    node: tuple[ClusterHosts, Path],
) -> None:
    _up(node, True, probe="one", setting="a", guard="g1")
    first = _read(node)
    assert (first["probe"], first["setting"], first["guard"]) == ("one", "a", "g1"), first

    _up(node, False, probe="two", setting="b", guard="g1")  # written; its service is left as it was
    left = _read(node)
    assert left == first, left
    done = node[0].ssh("node", f"cat {STATE}/config/probe/setting.txt")
    assert done.stdout == "b", done.stdout + done.stderr

    _up(node, True, probe="two", setting="b", guard="g1")  # writes nothing new, restarts it
    after = _read(node)
    assert after["pid"] != first["pid"], after
    assert (after["probe"], after["setting"]) == ("two", "b"), after

    assert _up(node, True, probe="two", setting="b", guard="g1") == 0
    assert _read(node)["pid"] == after["pid"]


def test_a_reload_file_written_but_not_reloaded_is_reloaded_on_the_next_run(
    node: tuple[ClusterHosts, Path],
) -> None:
    _up(node, True, probe="two", setting="b", guard="g1")
    before = _read(node)

    _up(node, False, probe="two", setting="b", guard="g2")
    assert _read(node) == before

    _up(node, True, probe="two", setting="b", guard="g2")
    after = _read(node)
    assert after == before | {"guard": "g2"}, after  # the same process, the file read again

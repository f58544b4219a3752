"""The cluster's Ansible roles: Galaxy layout, prefixed variables, a preflight assert that tells the
fix, ansible-lint's production profile, and the systemd unit template quoting a command exactly."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
BIN = Path(sys.executable).parent
SERVICE_ROLES = ("mlflow", "seaweedfs", "serving", "controller", "monitoring", "gateway", "train_worker")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: scripts/bootstrap.sh with the cluster extra installs it")
    return str(path)


def role_filters(role: str, plugin: str) -> dict[str, Any]:
    """The filters a role's filter plugin gives Ansible (``roles/ROLE/filter_plugins/PLUGIN.py``),
    loaded from its file as Ansible loads it: the plugin folders are not a package."""
    spec = importlib.util.spec_from_file_location(plugin, ROLES / role / "filter_plugins" / f"{plugin}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    filters: dict[str, Any] = module.FilterModule().filters()
    return filters


def _env(tmp_path: Path) -> dict[str, str]:
    # Ansible's own folders in the test's temporary directory, nothing read from the user's setup.
    return os.environ | {
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    done = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--nocolor", "--profile", "production", "roles/"],
        cwd=ROLES.parent,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


@pytest.mark.parametrize("role", ["common", "serving_drain", *SERVICE_ROLES])
def test_each_role_has_the_galaxy_layout_prefixed_variables_and_an_assert_with_the_fix(role: str) -> None:
    root = ROLES / f"appliance_{role}"
    for part in ("tasks/main.yml", "defaults/main.yml", "meta/main.yml", "meta/argument_specs.yml"):
        assert (root / part).is_file(), f"{root.name} lacks {part}"
    defaults = yaml.safe_load((root / "defaults/main.yml").read_text())
    assert defaults and all(name.startswith(f"appliance_{role}_") for name in defaults)
    specs = yaml.safe_load((root / "meta/argument_specs.yml").read_text())["argument_specs"]
    assert set(defaults) <= set(specs["main"]["options"]), "every default is documented in argument_specs"
    tasks = yaml.safe_load((root / "tasks/main.yml").read_text())
    asserts = [t for t in tasks if "ansible.builtin.assert" in t]
    assert asserts and all(len(t["ansible.builtin.assert"]["fail_msg"]) > 40 for t in asserts)
    every_module = [key for t in tasks for key in t if key not in ("name", "when", "loop", "vars")]
    assert all(key.startswith("ansible.builtin.") or key in _TASK_KEYWORDS for key in every_module)


_TASK_KEYWORDS = {
    "loop_control", "register", "no_log", "notify", "changed_when", "failed_when", "delegate_to", "become",
    "environment",
    "become_user", "run_once", "check_mode",
}  # fmt: skip


def test_the_site_playbook_runs_every_service_role() -> None:
    plays = yaml.safe_load((ROLES / "site.yml").read_text())
    used = {r["role"] for play in plays for r in play.get("roles", [])}
    assert used == {"appliance_common", *(f"appliance_{r}" for r in SERVICE_ROLES)}
    groups = {g for play in plays for g in play["hosts"].split(":")}
    assert groups == {
        "all",
        "control",
        "storage",
        "serving",
        "edge",
        "train_workers",
        "gateway",
    }
    # node exporter runs on every host, so the monitoring play does; the monitoring group's host
    # is the one whose rendered units include Prometheus
    (monitoring,) = [play for play in plays if "appliance_monitoring" in str(play.get("roles"))]
    assert monitoring["hosts"] == "all"
    # facts once, for every host, by the first play
    assert plays[0]["hosts"] == "all" and all(play["gather_facts"] is False for play in plays[1:])
    # only the minimal facts: the roles read none that the hardware or network collectors add
    assert plays[0]["gather_subset"] == ["min"]
    fact = re.compile(r"ansible_facts(?:\['(\w+)'\]|\.(\w+))")
    read = {a or b for f in ROLES.rglob("*.yml") for a, b in fact.findall(f.read_text())}
    # memtotal_mb: preflight.yml, which gathers them all; packages: debs.yml's package_facts
    assert read <= {"service_mgr", "python", "python_version", "memtotal_mb", "packages"}, read


def test_the_unit_template_quotes_a_command_exactly_as_systemd_reads_it(tmp_path: Path) -> None:
    command = ["/opt/app venv/bin/python", "-m", "x", "--pw", 'a"b\\c', "--fmt", "100%", "$HOME", "--n", "8"]
    unit = {"name": "serving", "description": "the model server", "command": command, "after": ["mlflow"]}
    env = {"TOKEN": 'se"cr\\et', "PLAIN": "1"}
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps({"item": unit | {"env": env}}))
    for template, out in (("unit.service.j2", "unit"), ("unit.env.j2", "env")):
        done = subprocess.run(
            [
                _tool("ansible"), "localhost", "-c", "local", "-i", "localhost,", "-e", f"@{variables}",
                "-e", "appliance_common_user=appliance appliance_common_group=appliance",
                "-e", "appliance_common_state_dir=/var/lib/appliance",
                "-e", f"ansible_python_interpreter={sys.executable}",
                "-m", "ansible.builtin.template",
                "-a", f"src={ROLES}/appliance_common/templates/{template} dest={tmp_path / out}",
            ],
            env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    text = (tmp_path / "unit").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
    # systemd: double quotes with \" and \\ as in the shell; %% and $$ stand for % and $.
    parsed = [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(exec_start)]
    assert parsed == command
    assert "After=network-online.target appliance-mlflow.service" in text
    assert "EnvironmentFile=/etc/appliance-serving.env" in text and "User=appliance" in text
    lines = (tmp_path / "env").read_text().splitlines()
    written = dict(line.split("=", 1) for line in lines if "=" in line)
    assert {k: shlex.split(v)[0] for k, v in written.items()} == env

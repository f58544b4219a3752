"""A train worker's check that its virtualenv has torch (roles/appliance_train_worker/tasks/torch.yml),
run by real Ansible on this machine: a virtualenv with torch passes, one without fails the run with
the host, the virtualenv and the fix named, and plan on a host whose virtualenv is only planned
does not fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_cluster_roles import ROLES, _env, _tool

TASKS = ROLES / "appliance_train_worker" / "tasks" / "torch.yml"


def _venv_without_torch(tmp_path: Path) -> Path:
    """A folder whose bin/python is a Python with no torch (the system's, in a virtualenv of its own)."""
    venv = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


def _play(tmp_path: Path, venv: Path, *extra: str, planned: bool = False) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "The train worker's torch check alone",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "vars": {
                        "appliance_common_venv": str(venv),
                        "appliance_train_worker_venv_planned": planned,
                    },
                    "tasks": [{"ansible.builtin.include_tasks": str(TASKS)}],
                }
            ]
        )
    )
    return subprocess.run(
        [_tool("ansible-playbook"), "-c", "local", "-i", "localhost,", str(playbook), *extra,
         "-e", f"ansible_python_interpreter={sys.executable}"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_virtualenv_with_torch_passes(tmp_path: Path) -> None:
    done = _play(tmp_path, Path(sys.prefix))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "failed=0" in done.stdout


def test_a_virtualenv_without_torch_fails_naming_the_host_and_the_fix(tmp_path: Path) -> None:
    venv = _venv_without_torch(tmp_path)
    done = _play(tmp_path, venv)
    assert done.returncode != 0
    assert f"{venv} on localhost has no torch (No module named torch)" in done.stdout, done.stdout[-3000:]
    assert "mlops-appliance[train]" in done.stdout
    # plan, on a host whose virtualenv the wheelhouse would only make: nothing to say yet
    planned = _play(tmp_path, venv, "--check", planned=True)
    assert planned.returncode == 0, planned.stdout[-3000:]

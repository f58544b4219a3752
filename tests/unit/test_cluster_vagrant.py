"""The three-VM lab's Vagrantfile: valid for Vagrant (no hypervisor needed), 2 vCPU and 2 GiB per VM,
provisioned by the cluster's own playbook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.cluster.inventory import GROUPS

ROOT = Path(__file__).resolve().parents[2]


def _validate(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("vagrant is missing: scripts/bootstrap.sh installs Debian's vagrant for the tests")
    env = os.environ | {"VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_the_vagrantfile_validates_and_names_the_clusters_playbook(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    (lab / "roles").mkdir(parents=True)
    shutil.copy(ROOT / "Vagrantfile", lab / "Vagrantfile")
    shutil.copy(ROOT / "roles" / "site.yml", lab / "roles" / "site.yml")
    done = _validate(lab, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully" in done.stdout
    assert {"ctl1", "srv1", "trn1"} <= set(re.findall(r"==> (\w+): ", done.stdout))
    # The check is real: a provisioner setting Vagrant does not know fails it.
    text = (lab / "Vagrantfile").read_text().replace("ansible.limit =", "ansible.limitt =")
    (lab / "Vagrantfile").write_text(text)
    broken = _validate(lab, tmp_path)
    assert broken.returncode != 0 and "limitt" in broken.stdout + broken.stderr


def test_each_vm_has_two_vcpus_and_two_gib() -> None:
    text = (ROOT / "Vagrantfile").read_text()
    names = re.findall(r'^\s+"(\w+)" => \{ ip: "192\.168\.56\.\d+"', text, re.M)
    assert len(names) == 3
    assert not set(names) & set(GROUPS), names  # a host named like a group shadows it in plays
    assert text.count("cpus = 2") == 2 and text.count("memory = 2048") == 2  # virtualbox and libvirt
    assert 'ansible.playbook = "roles/site.yml"' in text

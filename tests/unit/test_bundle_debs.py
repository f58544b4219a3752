"""The bundle's debs: the roles' package list, the closure read from apt-cache's output, the
Packages index made from real debs (built here with dpkg-deb) and read back, and the refusal of a
machine that is not Debian 12."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.bundle import debs
from appliance.bundle.manifest import BundleError

DEPENDS = """\
postgresql
  Depends: postgresql-15
postgresql-15
  Depends: libpq5
  Depends: <debconf-2.0>
    cdebconf
    debconf
  Depends: locales
 |Depends: locales-all
libpq5
<debconf-2.0>
cdebconf
debconf
locales
locales-all
libc6:i386
"""


def test_parse_depends_keeps_real_packages_and_every_alternative() -> None:
    assert debs.parse_depends(DEPENDS) == [
        "cdebconf", "debconf", "libpq5", "locales", "locales-all", "postgresql", "postgresql-15",
    ]  # fmt: skip


def test_role_packages_come_from_the_roles_defaults(tmp_path: Path) -> None:
    for role, text in {
        "appliance_a": "appliance_a_package: nginx\nappliance_a_units: []\n",
        "appliance_b": "appliance_b_package_of:\n  prom: prometheus\n  node: prometheus-node-exporter\n",
        "appliance_c": "appliance_c_packages: [postgresql, nginx]\nappliance_c_packaged: no\n",
    }.items():
        (tmp_path / role / "defaults").mkdir(parents=True)
        (tmp_path / role / "defaults" / "main.yml").write_text(text)
    assert debs.role_packages(tmp_path) == ["nginx", "postgresql", "prometheus", "prometheus-node-exporter"]


def test_the_real_roles_name_every_package_they_install() -> None:
    assert set(debs.role_packages()) >= {
        "postgresql", "prometheus", "prometheus-alertmanager", "prometheus-node-exporter", "nginx",
        "python3-venv",
    }  # fmt: skip


def test_closure_files_map_each_role_package_to_its_debs() -> None:
    found = {
        "a_1_all.deb": {"package": "a", "version": "1"},
        "b_2_amd64.deb": {"package": "b", "version": "2"},
    }
    closure = {"a": ["a", "b", "virtual-only"], "b": ["b"]}
    assert debs.closure_files(closure, found) == {
        "a": ["a_1_all.deb", "b_2_amd64.deb"],
        "b": ["b_2_amd64.deb"],
    }


def _deb(folder: Path, name: str, version: str, depends: str = "") -> Path:
    root = folder / f"build-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    control = [
        f"Package: {name}", f"Version: {version}", "Architecture: all", "Maintainer: Test <t@example.org>",
        *([f"Depends: {depends}"] if depends else []),
        "Description: a test package", " with a second line", " .", " and a paragraph",
    ]  # fmt: skip
    (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    out = folder / f"{name}_{version.replace(':', '%3a')}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True, capture_output=True
    )
    shutil.rmtree(root)
    return out


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_index_is_made_from_each_debs_control_fields_and_reads_back(tmp_path: Path) -> None:
    first = _deb(tmp_path, "alpha", "1:2.0-1", depends="beta (>= 1)")
    second = _deb(tmp_path, "beta", "1.5")
    found = debs.write_index(tmp_path)
    assert found == {
        first.name: {"package": "alpha", "version": "1:2.0-1"},
        second.name: {"package": "beta", "version": "1.5"},
    }
    text = (tmp_path / "Packages").read_text()
    assert text.count("\n\n") == 1  # two paragraphs, one blank line between them
    index = debs.read_index(text)
    assert set(index) == {first.name, second.name}
    stanza = index[first.name]["stanza"]
    assert f"Filename: ./{first.name}\n" in stanza and "Depends: beta (>= 1)\n" in stanza
    assert f"SHA256: {hashlib.sha256(first.read_bytes()).hexdigest()}\n" in stanza
    assert f"Size: {first.stat().st_size}\n" in stanza
    assert " with a second line\n .\n and a paragraph\n" in stanza  # continuation lines kept
    assert index[first.name]["version"] == "1:2.0-1" and index[second.name]["package"] == "beta"


def test_a_machine_that_is_not_debian_12_is_refused(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('ID=ubuntu\nVERSION_CODENAME="jammy"\n')
    with pytest.raises(BundleError) as err:
        debs.check_machine(release)
    assert "jammy" in str(err.value) and "Debian 12" in (err.value.fix or "")
    release.write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    debs.check_machine(release)


def test_a_bundle_without_debs_or_wheels_is_refused_for_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.bundle import hosts, manifest

    fake = manifest.Manifest(
        profile="lab", appliance_version="0", created="now", files={"stacks/a": "0" * 64}
    )
    monkeypatch.setattr(hosts, "require_trusted", lambda bundle: fake)
    with pytest.raises(BundleError) as err:
        hosts.verified_for_hosts(tmp_path / "bundle.tar", tmp_path / "out")
    assert "neither debs nor wheels" in str(err.value) and "--debs" in (err.value.fix or "")

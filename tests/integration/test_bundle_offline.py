"""An offline bundle for the edge profile, made from real images, then checked and loaded with no
network at all (``unshare -n``: a network namespace with nothing but a downed loopback)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import APPLIANCE, free_ports, run_cli
from tests.integration._container_fixtures import MONITORING_IMAGE, ensure_images, runtime_available

# The first test may build the images (base, wheelhouse, mlflow): ~12 min on a fresh 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
EDGE = {
    "profile": "edge",
    "object_store": {"kind": "filesystem"},
    "components": {"serving": False, "controller": False},
    "images": dict.fromkeys(("prometheus", "node-exporter", "alertmanager"), MONITORING_IMAGE),
}


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh network namespace: any network use would fail."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing: the offline check cannot run")
    return subprocess.run(["unshare", "-n", APPLIANCE, *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def edge_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not runtime_available("podman"):
        pytest.skip("podman is not installed or does not answer")
    ensure_images("podman")
    root = tmp_path_factory.mktemp("bundle")
    answers = root / "appliance.yaml"
    answers.write_text(yaml.safe_dump(EDGE | {"ports": free_ports()}))
    out = root / "edge.tar"
    made = run_cli("bundle", "create", "-o", str(out), "--no-wheelhouse", answers=answers, state=root / "s")
    print(made.stdout.strip())
    return out


def test_bundle_holds_each_image_once_with_the_services_using_it(edge_bundle: Path) -> None:
    shown = offline("bundle", "inspect", "--json", str(edge_bundle))
    assert shown.returncode == 0, shown.stderr
    manifest = yaml.safe_load(shown.stdout)
    assert manifest["profile"] == "edge"
    assert manifest["images"] == dict.fromkeys(
        ("alertmanager", "node-exporter", "prometheus"), MONITORING_IMAGE
    )
    assert list(manifest["archives"]) == [MONITORING_IMAGE]
    assert "stacks/services.yaml" in manifest["files"]


def test_verify_offline_passes_then_names_an_added_file(edge_bundle: Path, tmp_path: Path) -> None:
    ok = offline("bundle", "verify", str(edge_bundle))
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    altered = tmp_path / "altered.tar"
    shutil.copy(edge_bundle, altered)
    with tarfile.open(altered, "a") as tar:
        info = tarfile.TarInfo("stacks/extra.yaml")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x: "))
    bad = offline("bundle", "verify", str(altered))
    assert bad.returncode == 2
    assert "extra: stacks/extra.yaml" in bad.stderr


def test_load_offline_puts_the_images_into_docker(edge_bundle: Path) -> None:
    if not runtime_available("docker"):
        pytest.skip("docker is not installed or its daemon does not answer")
    subprocess.run(["docker", "rmi", "-f", MONITORING_IMAGE], capture_output=True, check=False)
    assert (
        subprocess.run(["docker", "image", "inspect", MONITORING_IMAGE], capture_output=True).returncode != 0
    )
    loaded = offline("bundle", "load", "--engine", "docker", str(edge_bundle))
    assert loaded.returncode == 0, loaded.stderr
    assert (
        subprocess.run(["docker", "image", "inspect", MONITORING_IMAGE], capture_output=True).returncode == 0
    )

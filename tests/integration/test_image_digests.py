"""Digest-pinned references (``name:tag@sha256:...``) with real engines and no registry: podman runs
an image by such a reference (podman gives local images a manifest digest); a bundle archive of it
keeps ``name:tag`` (a docker-archive holds no registry digest); after loading that archive, offline,
each runtime runs the pinned reference from ``name:tag``, and a reference nobody holds still fails."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.errors import ApplianceError
from appliance.images.build import load_image, save_image
from appliance.images.catalog import BASE_TAG
from appliance.runtimes.docker_rt import DockerRuntime
from appliance.runtimes.podman_rt import PodmanRuntime
from tests.conftest import use_runtime

pytestmark = [pytest.mark.integration]

NAME = "quay.io/appliance-test/pinned:v1"


@pytest.fixture
def pinned() -> Iterator[str]:
    """``NAME@<podman's digest of it>``, made from the local base image."""
    use_runtime("podman")
    subprocess.run(["podman", "tag", BASE_TAG, NAME], check=True)
    try:
        digest = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Digest}}", NAME],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        yield f"{NAME}@{digest}"
    finally:
        subprocess.run(["podman", "rmi", NAME], capture_output=True, check=False)


def test_a_pinned_reference_runs_and_its_bundle_archive_keeps_the_tag(pinned: str, tmp_path: Path) -> None:
    podman = PodmanRuntime(tmp_path / "podman", Answers())
    assert podman._ensure_image(pinned) == pinned
    archive = tmp_path / "pinned.tar"
    save_image("podman", pinned, archive)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [NAME]

    use_runtime("docker")
    load_image("docker", archive)
    try:
        docker = DockerRuntime(tmp_path / "docker", Answers())
        assert docker._ensure_image(pinned) == NAME
        absent = "quay.io/appliance-test/absent:v1@" + pinned.rsplit("@", 1)[1]
        with pytest.raises(ApplianceError, match="pulling it failed"):
            docker._ensure_image(absent)
    finally:
        subprocess.run(["docker", "rmi", NAME], capture_output=True, check=False)

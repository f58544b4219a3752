"""Images that hold other appliance code than the host's are refused, with real engines.

A project wheel built from this checkout holds exactly this checkout's code (by the digest images
are labelled with); ``appliance preflight`` and ``up`` on podman and docker fail on an appliance
image labelled with other code, or with none, naming the command that rebuilds it, and pass the
same image labelled with this code; ``bundle create`` refuses to pack a stale image and leaves no
file. The images here are the base image with labels (seconds to build), not the real ones.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle.create import create_bundle
from appliance.bundle.manifest import BundleError
from appliance.images.build import CODE_LABEL, transfer
from appliance.images.catalog import BASE_TAG, LABEL
from appliance.images.code_digest import running_code_digest, wheel_code_digest
from appliance.images.wheelhouse import build_project_wheel
from tests.conftest import run_cli, runtime_params, use_runtime, write_answers

pytestmark = [pytest.mark.integration]

STALE = "localhost/appliance-test/serving-stale:v1"
UNLABELLED = "localhost/appliance-test/serving-unlabelled:v1"
CURRENT = "localhost/appliance-test/serving-current:v1"


def labelled_image(tag: str, folder: Path, code: str | None) -> None:
    """The base image with a serving image's labels (and ``code`` as its code label). The labels
    are in the Containerfile: podman's layer cache would reuse an image built with other
    ``--label`` options."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [f'{LABEL}="serving"', f'{LABEL}.flavor="cpu"']
    if code is not None:
        labels.append(f'{CODE_LABEL}="{code}"')
    (folder / "Containerfile").write_text(f"FROM {BASE_TAG}\nLABEL {' '.join(labels)}\n")
    subprocess.run(["podman", "build", "-q", "-t", tag, str(folder)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    use_runtime("podman")
    root = tmp_path_factory.mktemp("images")
    labelled_image(STALE, root / "stale", "0123456789abcdef")
    labelled_image(UNLABELLED, root / "unlabelled", None)
    labelled_image(CURRENT, root / "current", running_code_digest())
    try:
        yield
    finally:
        for tag in (STALE, UNLABELLED, CURRENT):
            for engine in ("podman", "docker"):
                subprocess.run([engine, "rmi", "-f", tag], capture_output=True, check=False)


def test_a_wheel_of_this_checkout_holds_its_code(tmp_path: Path) -> None:
    wheel = build_project_wheel(tmp_path / "wheels")
    assert wheel_code_digest(wheel) == running_code_digest()


def edge_answers(root: Path, runtime: str, image: str) -> Path:
    """An edge stack's answers on ``runtime``, its model server in ``image``."""
    return write_answers(
        root / "appliance.yaml",
        runtime=runtime,
        profile="edge",
        object_store={"kind": "filesystem"},
        serving={"model": "/var/lib/appliance/models/mlp/model.onnx"},
        images={"serving": image},
    )


def serving_check(runtime: str, image: str, root: Path) -> tuple[int, dict[str, str]]:
    """``appliance preflight --json`` of an edge stack on ``runtime`` serving from ``image``: the
    exit code and the serving image's check."""
    root.mkdir()
    answers = edge_answers(root, runtime, image)
    proc = run_cli("preflight", "--json", answers=answers, state=root / "state", check=False)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    return proc.returncode, checks["image serving"]


@pytest.mark.parametrize("runtime", runtime_params("podman", "docker"))
def test_preflight_refuses_an_image_holding_other_code(
    test_images: None, runtime: str, tmp_path: Path
) -> None:
    use_runtime(runtime)
    if runtime == "docker":
        for tag in (STALE, UNLABELLED, CURRENT):
            transfer(tag, "docker")
    here = running_code_digest()

    code, check = serving_check(runtime, STALE, tmp_path / "stale")
    assert code == 3 and check["status"] == "fail", check
    assert f"holds appliance code 0123456789abcdef, not this appliance's {here}" in check["detail"]
    assert "`appliance images build serving`" in check["fix"]

    code, check = serving_check(runtime, UNLABELLED, tmp_path / "unlabelled")
    assert code == 3 and check["status"] == "fail", check
    assert "built before images named the appliance code" in check["detail"]

    code, check = serving_check(runtime, CURRENT, tmp_path / "current")
    assert check == {"name": "image serving", "status": "pass", "detail": CURRENT, "fix": ""}, check


def test_up_stops_before_starting_anything(test_images: None, tmp_path: Path) -> None:
    use_runtime("podman")
    answers = edge_answers(tmp_path, "podman", STALE)
    before = podman_names()
    up = run_cli("up", answers=answers, state=tmp_path / "state", check=False)
    assert up.returncode != 0
    assert (
        "holds appliance code 0123456789abcdef" in up.stderr and "appliance images build serving" in up.stderr
    )
    assert podman_names() == before  # no container made


def podman_names() -> set[str]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_bundle_create_refuses_a_stale_image_and_leaves_no_file(
    test_images: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_CONFIG_DIR", str(tmp_path / "config"))  # the signing key
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "edge.tar"
    with pytest.raises(BundleError) as refused:
        create_bundle(out, "edge", {"serving": STALE})
    assert "hold other appliance code than the bundle installs" in str(refused.value)
    assert "`appliance images build serving`" in (refused.value.fix or "")
    assert list(folder.iterdir()) == []

    made = create_bundle(out, "edge", {"serving": CURRENT})
    assert made.images == {"serving": CURRENT} and out.is_file()


def test_images_list_tells_current_from_stale(test_images: None) -> None:
    rows = {row["tag"]: row for row in json.loads(run_cli("images", "list", "--json").stdout)}
    assert [rows[tag]["code"] for tag in (STALE, UNLABELLED, CURRENT)] == ["stale", "stale", "current"]
    text = run_cli("images", "list").stdout
    assert "stale: holds other appliance code than this one" in text

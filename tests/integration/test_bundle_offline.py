"""An offline bundle for the edge profile, made from real images, then checked and loaded with no
network at all (``unshare -n``: a network namespace with nothing but a downed loopback), and
``up --bundle`` bringing a stack up from it inside such a namespace with only its loopback up."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import APPLIANCE, free_ports, run_cli, write_answers
from tests.integration._container_fixtures import MONITORING_IMAGE, ensure_images, runtime_available

# The first test may build the images (base, wheelhouse, mlflow): ~12 min on a fresh 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
EDGE = {
    "profile": "edge",
    "object_store": {"kind": "filesystem"},
    "components": {"serving": False, "controller": False, "dashboards": False},
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


@dataclass(frozen=True)
class Step:
    """One command's outcome inside the namespace."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def in_one_namespace(workdir: Path, *steps: list[str], timeout: float = 900) -> list[Step]:
    """Run each step (argv of the CLI) in turn in ONE fresh network namespace whose loopback is up.

    Services started by one step listen on that namespace's loopback, so later steps (status,
    down) must run in the same namespace; every step runs whatever the ones before returned.
    """
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is missing: the offline check cannot run")
    if shutil.which("ip") is None:
        pytest.fail("ip is missing: install the apt package iproute2 (scripts/bootstrap.sh does)")
    lines = ["ip link set lo up || exit 97"]
    for i, argv in enumerate(steps):
        out = workdir / f"step{i}"
        cmd = shlex.join([APPLIANCE, *argv])
        lines.append(
            f"s=$(date +%s%N); {cmd} >{out}.out 2>{out}.err; echo $? >{out}.rc; "
            f"echo $(( $(date +%s%N) - s )) >{out}.ns"
        )
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"namespace setup failed ({proc.returncode}): {proc.stderr}"
    results = []
    for i in range(len(steps)):
        out = workdir / f"step{i}"
        results.append(
            Step(
                int((out.with_suffix(".rc")).read_text()),
                out.with_suffix(".out").read_text(),
                out.with_suffix(".err").read_text(),
                int(out.with_suffix(".ns").read_text()) / 1e9,
            )
        )
    return results


@pytest.fixture
def bundle_of_a_fresh_tag(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An edge bundle whose image tag podman does not hold, so ``up --bundle`` must load it.

    The tag is a second name of the monitoring image, removed again once the bundle is made
    (podman keeps the image under its own name; other tests running beside are not disturbed).
    """
    if not runtime_available("podman"):
        pytest.skip("podman is not installed or does not answer")
    ensure_images("podman")
    tag = f"localhost/appliance-bundle-test-{uuid.uuid4().hex[:8]}:latest"
    subprocess.run(["podman", "tag", MONITORING_IMAGE, tag], check=True)
    try:
        answers = write_answers(
            tmp_path / "make.yaml", **(EDGE | {"images": dict.fromkeys(EDGE["images"], tag)})
        )
        out = tmp_path / "edge.tar"
        run_cli("bundle", "create", "-o", str(out), "--no-wheelhouse", answers=answers, state=tmp_path / "m")
        subprocess.run(["podman", "rmi", tag], capture_output=True, check=True)
        yield out, tag
    finally:
        subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)


def test_up_from_a_bundle_with_no_network(bundle_of_a_fresh_tag: tuple[Path, str], tmp_path: Path) -> None:
    bundle, tag = bundle_of_a_fresh_tag
    answers = write_answers(tmp_path / "appliance.yaml", runtime="local", **EDGE)
    state = tmp_path / "state"
    cli = ["--answers", str(answers), "--state-dir", str(state)]
    up = [*cli, "up", "--bundle", str(bundle), "--load-images", "podman"]
    first, status, again, down = in_one_namespace(
        tmp_path, up, [*cli, "status", "--json"], up, [*cli, "down"]
    )
    print(f"up --bundle (image loaded): {first.seconds:.1f}s; again (image present): {again.seconds:.1f}s")

    assert first.returncode == 0, first.stdout + first.stderr
    assert "intact: " in first.stderr
    assert f"{tag}: loading into podman" in first.stderr
    assert "no wheelhouse in the bundle" in first.stderr
    health = {name: s["health"] for name, s in json.loads(status.stdout)["services"].items()}
    assert health == dict.fromkeys(("node-exporter", "prometheus", "alertmanager"), "healthy"), status
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{tag}: already in podman" in again.stderr
    assert "stack already up to date (0 actions)" in again.stdout
    assert down.returncode == 0, down.stdout + down.stderr
    # The image came in from the bundle alone.
    assert subprocess.run(["podman", "image", "inspect", tag], capture_output=True).returncode == 0


def test_up_from_a_tampered_bundle_changes_nothing(edge_bundle: Path, tmp_path: Path) -> None:
    altered = tmp_path / "tampered.tar"
    shutil.copy(edge_bundle, altered)
    with tarfile.open(altered) as tar:
        offset = tar.getmember("stacks/services.yaml").offset_data
    with altered.open("r+b") as fh:  # same size, one byte different
        fh.seek(offset)
        first = fh.read(1)
        fh.seek(offset)
        fh.write(b"#" if first != b"#" else b"x")
    answers = write_answers(tmp_path / "appliance.yaml", runtime="local", **EDGE)
    state = tmp_path / "state"
    cli = ["--answers", str(answers), "--state-dir", str(state)]

    bad = offline(*cli, "up", "--bundle", str(altered), "--load-images", "podman")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "tampered: stacks/services.yaml" in bad.stderr
    assert "loading" not in bad.stderr
    assert not state.exists(), "up started something from a tampered bundle"

    missing = offline(*cli, "up", "--bundle", str(tmp_path / "nowhere.tar"))
    assert missing.returncode == 2
    assert f"no bundle at {tmp_path / 'nowhere.tar'}" in missing.stderr
    assert not state.exists()


def _rewritten(bundle: Path, out: Path, drop_signature: bool, manifest_change: dict[str, str]) -> Path:
    """A copy of ``bundle`` (streamed, member by member) without its signature, or with fields of
    its manifest changed while the signature stays."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src:
            if member.name == "manifest.sig" and drop_signature:
                continue
            stream = src.extractfile(member)
            if member.name == "manifest.json" and manifest_change:
                assert stream is not None
                data = json.loads(stream.read()) | manifest_change
                raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
                member.size = len(raw)
                stream = io.BytesIO(raw)  # type: ignore[assignment]
            dst.addfile(member, stream)
    return out


@pytest.mark.parametrize(
    ("drop", "change", "reason"),
    [(True, {}, "is not signed"), (False, {"profile": "lab"}, "altered after it was signed")],
    ids=["unsigned", "manifest-changed"],
)
def test_up_from_an_unsigned_or_re_manifested_bundle_loads_nothing(
    edge_bundle: Path, tmp_path: Path, drop: bool, change: dict[str, str], reason: str
) -> None:
    bad_bundle = _rewritten(edge_bundle, tmp_path / "bad.tar", drop, change)
    answers = write_answers(tmp_path / "appliance.yaml", runtime="local", **EDGE)
    state = tmp_path / "state"
    cli = ["--answers", str(answers), "--state-dir", str(state)]
    for args in (
        ["up", "--bundle", str(bad_bundle), "--load-images", "podman"],
        ["bundle", "verify", str(bad_bundle)],
    ):
        bad = offline(*(cli if args[0] == "up" else []), *args)
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert reason in bad.stderr and "fix:" in bad.stderr
        assert "loading" not in bad.stderr
    assert not state.exists(), "up started something from a bundle it could not trust"

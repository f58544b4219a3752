"""The backup archive's formats without a stack: the manifest, the encrypted stream, and one
checked pass over an archive (a state directory made of plain files)."""

from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.backup import crypto
from appliance.backup.create import create_backup
from appliance.backup.crypto import DecryptingReader, EncryptingWriter, EncryptionError, Secret
from appliance.backup.manifest import MANIFEST_NAME, BadArchiveError, Manifest, Member, compare
from appliance.backup.read import read_info, scan
from appliance.backup.restore import restore
from appliance.context import AppContext


def _encrypt(data: bytes, secret: Secret) -> bytes:
    out = io.BytesIO()
    writer = EncryptingWriter(out, secret, {"appliance_version": "1"})
    for i in range(0, len(data), 777):
        writer.write(data[i : i + 777])
    writer.close()
    return out.getvalue()


def _decrypt(blob: bytes, secret: Secret | None) -> bytes:
    reader = DecryptingReader(io.BytesIO(blob), secret, "test")
    out = b""
    while chunk := reader.read(5000):
        out += chunk
    reader.finish()
    return out


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK", 1000)
    monkeypatch.setattr(crypto, "SCRYPT", {"n": 1 << 10, "r": 8, "p": 1})


DATA = os.urandom(10_500)  # eleven chunks, the last one short


def test_passphrase_round_trip_and_wrong_passphrase() -> None:
    blob = _encrypt(DATA, Secret(passphrase=b"right"))
    assert DATA[:64] not in blob
    assert _decrypt(blob, Secret(passphrase=b"right")) == DATA
    with pytest.raises(EncryptionError, match="wrong passphrase or key"):
        _decrypt(blob, Secret(passphrase=b"wrong"))
    with pytest.raises(EncryptionError, match="--passphrase-file"):
        _decrypt(blob, None)


def test_recipient_key_round_trip_and_another_key(tmp_path: Path) -> None:
    public = crypto.generate_keypair(tmp_path / "key")
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    blob = _encrypt(DATA, Secret(recipient=crypto.load_public_key(public)))
    assert _decrypt(blob, Secret(identity=crypto.load_private_key(tmp_path / "key"))) == DATA
    crypto.generate_keypair(tmp_path / "other")
    with pytest.raises(EncryptionError, match="another key"):
        _decrypt(blob, Secret(identity=crypto.load_private_key(tmp_path / "other")))
    with pytest.raises(EncryptionError, match="exists"):
        crypto.generate_keypair(tmp_path / "key")


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split an encrypted blob into its head (magic + header) and its length-prefixed chunks."""
    head_end = blob.index(b"\n", len(crypto.MAGIC)) + 1
    head, rest, chunks = blob[:head_end], blob[head_end:], []
    while rest:
        size = int.from_bytes(rest[:4], "big") + 4
        chunks.append(rest[:size])
        rest = rest[size:]
    return head, chunks


def test_cut_reordered_or_altered_streams_are_refused() -> None:
    secret = Secret(passphrase=b"pw")
    head, chunks = _chunks(_encrypt(DATA, secret))
    assert len(chunks) == 11
    cases = {
        "dropped last chunk": head + b"".join(chunks[:-1]),
        "cut inside a chunk": head + b"".join(chunks)[:-10],
        "swapped chunks": head + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "altered header": head.replace(b'"chunk": 1000', b'"chunk": 1001') + b"".join(chunks),
        "bytes after the end": head + b"".join(chunks) + b"x",
    }
    for name, blob in cases.items():
        with pytest.raises(EncryptionError):
            _decrypt(blob, secret)
            pytest.fail(name)


def test_manifest_round_trip_and_comparison() -> None:
    manifest = Manifest("0.1.0", 1, "2026-01-01T00:00:00Z", "local", "filesystem")
    manifest.add("secrets", Member("secrets/a", 3, "aa", 0o600))
    manifest.add("data", Member("data/b", 5, "bb", 0o644))
    again = Manifest.from_json(manifest.to_json(), "x")
    assert again == manifest and again.parts == {
        "secrets": {"files": 1, "bytes": 3},
        "data": {"files": 1, "bytes": 5},
    }
    compare(again, list(manifest.members), "x")
    with pytest.raises(BadArchiveError, match="member data/b is damaged"):
        compare(again, [manifest.members[0], Member("data/b", 5, "cc", 0o644)], "x")
    with pytest.raises(BadArchiveError, match="member data/b is missing"):
        compare(again, manifest.members[:1], "x")
    with pytest.raises(BadArchiveError, match="not in the manifest"):
        compare(again, [*manifest.members, Member("extra", 1, "dd", 0o600)], "x")
    newer = json.loads(manifest.to_json()) | {"format": 99}
    with pytest.raises(BadArchiveError, match="archive format 99 is newer"):
        Manifest.from_json(json.dumps(newer).encode(), "x")
    with pytest.raises(BadArchiveError, match="unreadable"):
        Manifest.from_json(b"{not json", "x")


def _state(tmp_path: Path) -> AppContext:
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "serving_token").write_text("tok")
    (state / "mlflow" / "artifacts" / "1").mkdir(parents=True)
    (state / "mlflow" / "artifacts" / "1" / "model.onnx").write_bytes(os.urandom(3000))
    db = sqlite3.connect(state / "mlflow" / "mlflow.db")
    db.execute("CREATE TABLE alembic_version (version_num TEXT)")
    db.execute("INSERT INTO alembic_version VALUES ('rev42')")
    db.commit()
    db.close()
    (state / "data" / "datasets" / "wine").mkdir(parents=True)
    (state / "data" / "datasets" / "wine" / "wine.csv").write_text("a,b\n1,2\n")
    (state / "logs").mkdir()
    (state / "logs" / "mlflow.log").write_text("not backed up")
    answers = Answers.model_validate({"object_store": {"kind": "filesystem"}})
    return AppContext(answers, state)


def test_archive_is_private_complete_and_checked(tmp_path: Path) -> None:
    ctx = _state(tmp_path)
    old = os.umask(0)
    try:
        result = create_backup(ctx, str(tmp_path / "out") + "/")
    finally:
        os.umask(old)
    path = Path(result.path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left
    names = {m.name for m in result.manifest.members}
    assert {"secrets/serving_token", "mlflow/mlflow.db", "mlflow/artifacts/1/model.onnx"} <= names
    assert "data/datasets/wine/wine.csv" in names and not any(n.startswith("logs/") for n in names)
    assert result.manifest.mlflow_schema == "rev42"
    info = read_info(path)
    assert info is not None and info["appliance_version"] == result.manifest.appliance_version
    assert scan(path).members == result.manifest.members


def test_restore_round_trip_keeps_modes(tmp_path: Path) -> None:
    ctx = _state(tmp_path)
    path = Path(create_backup(ctx, str(tmp_path / "a.tar.gz")).path)
    done = restore(path, tmp_path / "new")
    assert (tmp_path / "new" / "secrets" / "serving_token").read_text() == "tok"
    assert (tmp_path / "new" / "secrets" / "serving_token").stat().st_mode & 0o777 == 0o600
    assert done.answers.stat().st_mode & 0o777 == 0o600
    original = (ctx.state_dir / "mlflow" / "artifacts" / "1" / "model.onnx").read_bytes()
    assert (tmp_path / "new" / "mlflow" / "artifacts" / "1" / "model.onnx").read_bytes() == original
    with pytest.raises(Exception, match="not empty"):
        restore(path, tmp_path / "new")


def _raw_archive(path: Path, members: dict[str, bytes]) -> None:
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_members_outside_the_archive_folders_and_missing_manifest_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    _raw_archive(evil, {"../escape": b"x", MANIFEST_NAME: b"{}"})
    with pytest.raises(BadArchiveError, match="outside"):
        scan(evil, into=tmp_path / "staging")
    assert not (tmp_path / "escape").exists()
    cut = tmp_path / "cut.tar.gz"
    _raw_archive(cut, {"secrets/a": b"x"})
    with pytest.raises(BadArchiveError, match="no manifest"):
        scan(cut)


def test_restore_onto_a_directory_with_data_needs_a_yes_and_swaps_every_part(tmp_path: Path) -> None:
    ctx = _state(tmp_path)
    path = Path(create_backup(ctx, str(tmp_path / "a.tar.gz")).path)
    (ctx.state_dir / "secrets" / "serving_token").write_text("changed since")
    (ctx.state_dir / "data" / "datasets" / "new").mkdir()
    with pytest.raises(Exception, match="not empty"):
        restore(path, ctx.state_dir, confirm=lambda _question: False)
    assert (ctx.state_dir / "secrets" / "serving_token").read_text() == "changed since"
    restore(path, ctx.state_dir, confirm=lambda _question: True)
    assert (ctx.state_dir / "secrets" / "serving_token").read_text() == "tok"
    assert not (ctx.state_dir / "data" / "datasets" / "new").exists()
    assert not [p.name for p in ctx.state_dir.iterdir() if "pre-restore" in p.name]
    assert (ctx.state_dir / "logs" / "mlflow.log").exists()  # not a part: left alone


def test_an_archive_from_a_newer_appliance_is_refused_with_nothing_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.backup import create as create_module
    from appliance.state_version import StateTooNewError

    monkeypatch.setattr(create_module, "__version__", "99.0.0")
    path = Path(create_backup(_state(tmp_path), str(tmp_path / "new.tar.gz")).path)
    with pytest.raises(StateTooNewError, match=r"99\.0\.0"):
        restore(path, tmp_path / "target")
    assert not (tmp_path / "target").exists()

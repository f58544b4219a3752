"""Restore onto a bundled store (SeaweedFS), its order and its all-or-nothing, without a store:
the store's start and the S3 upload are stand-ins here (the real ones run in
tests/integration/test_restore_seaweedfs.py).

The store's folder is swapped for an empty one before the store starts, the store gets the
restored keys, and a store that does not start puts back every old folder (and leaves a new
state directory as empty as it was).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.answers import Answers
from appliance.backup import create as create_module
from appliance.backup import restore as restore_module
from appliance.backup import snapshot
from appliance.backup.create import create_backup
from appliance.backup.restore import restore
from appliance.context import AppContext
from appliance.errors import ApplianceError

OBJECT = b"a,b,target\n1,2,0\n"


def _seaweed_state(
    root: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any] | None = None
) -> AppContext:
    """A state directory of a SeaweedFS stack; its one object is read by a stand-in for S3."""
    state = root / "state"
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "seaweedfs_admin_secret_key").write_text("the admin key")
    (state / "seaweedfs").mkdir()
    (state / "seaweedfs" / "volume_1.dat").write_bytes(b"old store data")
    entry = snapshot.Entry("s3/datasets/wine/wine.csv", 0o600, len(OBJECT), lambda: io.BytesIO(OBJECT))
    monkeypatch.setattr(snapshot, "s3_entries", lambda ctx: iter([entry]))
    monkeypatch.setattr(create_module, "readable", lambda ctx: contextlib.nullcontext())  # no store here
    chosen = Answers.model_validate(answers or {"object_store": {"kind": "seaweedfs"}})
    return AppContext(chosen, state)


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[AppContext, Path]:
    ctx = _seaweed_state(tmp_path, monkeypatch)
    return ctx, Path(create_backup(ctx, str(tmp_path / "a.tar.gz")).path)


def _store(monkeypatch: pytest.MonkeyPatch, starts: bool) -> list[dict[str, Any]]:
    """Stand-ins for the store's start and the upload; what each saw when it ran."""
    seen: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def running_alone(ctx: AppContext) -> Iterator[None]:
        folder = ctx.state_dir / "seaweedfs"
        seen.append(
            {
                "folder": sorted(p.name for p in folder.iterdir()),
                "key": ctx.secrets.get("seaweedfs_admin_secret_key"),
            }
        )
        (ctx.state_dir / "supervisor").mkdir(exist_ok=True)  # what a real start leaves behind
        if not starts:
            raise ApplianceError("seaweedfs did not become healthy")
        yield

    def upload(ctx: AppContext, root: Path, progress: Any) -> None:
        seen.append(
            {"objects": {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}}
        )

    monkeypatch.setattr(restore_module, "running_alone", running_alone)
    monkeypatch.setattr(restore_module, "_upload_objects", upload)
    return seen


def test_the_store_starts_on_an_empty_folder_with_the_restored_keys(
    archive: tuple[AppContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, path = archive
    seen = _store(monkeypatch, starts=True)
    restore(path, ctx.state_dir, confirm=lambda _q: True)
    assert seen == [
        {"folder": [], "key": "the admin key"},
        {"objects": {"datasets/wine/wine.csv": OBJECT}},
    ]
    assert not [p for p in ctx.state_dir.iterdir() if ".pre-restore-" in p.name]


def test_a_store_that_does_not_start_puts_the_old_folders_back(
    archive: tuple[AppContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, path = archive
    (ctx.state_dir / "secrets" / "seaweedfs_admin_secret_key").write_text("changed since")
    _store(monkeypatch, starts=False)
    with pytest.raises(ApplianceError, match="did not become healthy"):
        restore(path, ctx.state_dir, confirm=lambda _q: True)
    assert (ctx.state_dir / "seaweedfs" / "volume_1.dat").read_bytes() == b"old store data"
    assert (ctx.state_dir / "secrets" / "seaweedfs_admin_secret_key").read_text() == "changed since"
    assert not [p for p in ctx.state_dir.iterdir() if ".pre-restore-" in p.name]


def test_a_store_that_does_not_start_leaves_a_new_directory_empty(
    archive: tuple[AppContext, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _ctx, path = archive
    _store(monkeypatch, starts=False)
    target = tmp_path / "fresh"
    with pytest.raises(ApplianceError):
        restore(path, target)
    assert sorted(p.name for p in target.iterdir()) == [".lock"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".appliance-restore-")]


def test_an_edge_box_s_store_is_restored_into_a_new_directory_with_its_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge state from before ``auto`` meant no store there ran SeaweedFS (its keys are in the
    state, so it keeps it). Restored into an empty directory, ``auto`` would find no keys there
    and mean a folder, dropping the archive's objects: the restore uses the archive's store."""
    ctx = _seaweed_state(tmp_path, monkeypatch, {"profile": "edge", "object_store": {"kind": "auto"}})
    assert ctx.store_kind == "seaweedfs"
    path = Path(create_backup(ctx, str(tmp_path / "edge.tar.gz")).path)
    seen = _store(monkeypatch, starts=True)
    restore(path, tmp_path / "fresh")
    assert seen == [
        {"folder": [], "key": "the admin key"},
        {"objects": {"datasets/wine/wine.csv": OBJECT}},
    ]
    restored = AppContext(Answers.model_validate({"profile": "edge"}), tmp_path / "fresh")
    assert restored.store_kind == "seaweedfs"  # its keys came back: the next up runs the store


def test_the_answers_a_restore_works_with() -> None:
    from appliance.backup.restore import restoring_answers

    edge = {"profile": "edge", "object_store": {"kind": "auto", "models_bucket": "m"}}
    assert restoring_answers(edge, "seaweedfs")["object_store"] == {"kind": "seaweedfs", "models_bucket": "m"}
    assert restoring_answers({"profile": "edge"}, "minio")["object_store"] == {"kind": "minio"}
    assert restoring_answers(edge, "filesystem") == edge  # no store to refill
    named = {"object_store": {"kind": "s3", "endpoint": "https://s3.example.com"}}
    assert restoring_answers(named, "seaweedfs") == named  # a kind by name is the user's

"""``appliance restore ARCHIVE``: the whole archive is read and checked first, then put in place.

Order, so that a bad archive or a refused step changes nothing:

1. read every member into a staging folder beside the target (0700), hashing each, and match the
   manifest (BadArchiveError / EncryptionError otherwise); refuse an archive a newer appliance
   wrote (StateTooNewError);
2. look at the target: an empty (or absent) state directory goes ahead; one with data needs a
   yes from the user (``--yes``), and its stack must be down (restore never stops a running
   stack by itself: the user decides when serving stops);
3. with an external S3 store, upload the objects back into its buckets (before any local file
   moves, so a store that refuses leaves the state directory as it was);
4. under the state directory's lock, swap each part in: the old folder is renamed aside, the
   staged one moved in, and the old one deleted only when every part is in (an error puts the
   old folders back);
5. with a bundled store (SeaweedFS, MinIO), its data folder is one of those parts, swapped for an
   empty one; the store is then started alone with the restored keys, the objects uploaded and
   the store stopped (``appliance.backup.store`` says why objects and not the folder). A failure
   there still puts every old folder back, and removes what the store's start left in a
   state directory that was empty.

The answers file lands in ``STATE/appliance.yaml`` with ``state_dir`` set to the target (and
``runtime`` replaced when ``--runtime`` is given): ``appliance --answers STATE/appliance.yaml up``
brings the same stack up, with the same secrets, so the same tokens work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.answers_file import load_answers
from appliance.backup.crypto import Secret
from appliance.backup.layout import FOLDER_PARTS, layout_for, remove_made_since, stack_objects
from appliance.backup.manifest import Manifest
from appliance.backup.read import scan
from appliance.backup.snapshot import s3_client
from appliance.backup.store import data_folder, is_bundled, running_alone
from appliance.context import BUNDLED_KINDS, AppContext
from appliance.errors import ApplianceError
from appliance.state_lock import LOCK_FILE, state_lock
from appliance.state_version import StateTooNewError, is_newer

ANSWERS_NAME = "appliance.yaml"
Progress = Callable[[str, str, str], None]


@dataclass(frozen=True)
class RestoreResult:
    state_dir: Path
    answers: Path
    manifest: Manifest
    seconds: float


def _is_empty(state_dir: Path) -> bool:
    return not state_dir.exists() or all(p.name == LOCK_FILE for p in state_dir.iterdir())


def _write_answers(staged: Path, target: Path, runtime: str | None) -> Path:
    data = yaml.safe_load((staged / "answers" / ANSWERS_NAME).read_text()) or {}
    if not isinstance(data, dict):
        raise ApplianceError("the archive's answers file is not a mapping")
    data["state_dir"] = str(target)
    if runtime:
        data["runtime"] = runtime
    path = target / ANSWERS_NAME
    tmp = path.with_name(f".{ANSWERS_NAME}.restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def restoring_answers(answers: dict[str, Any], archived_store: str) -> dict[str, Any]:
    """The answers the restore works with: the archive's, with ``object_store.kind: auto`` read
    as the store the archive's stack ran (its manifest's ``store_kind``). ``auto`` is resolved
    against the target state, which is empty before the restore (an edge box's ``auto`` is then
    ``filesystem``, where the archive's SeaweedFS objects would be dropped) or on another machine
    (a MinIO binary found here); the archive's objects go into the store they came from, whose
    keys the restored secrets hold, and ``auto`` finds that store again from them."""
    store = answers.get("object_store")
    store = store if isinstance(store, dict) else {}
    if store.get("kind", "auto") != "auto" or archived_store not in BUNDLED_KINDS:
        return answers
    return answers | {"object_store": store | {"kind": archived_store}}


def _check_stack_down(ctx: AppContext) -> None:
    from appliance.engine import Engine

    # A finished job (state done) leaves only its marker; it runs nothing that restore could race.
    observed = Engine(ctx).observed().items()
    running = sorted(name for name, seen in observed if seen.running and seen.state != "done")
    if running:
        raise ApplianceError(
            f"the stack on {ctx.state_dir} is running ({', '.join(running)}); restore replaces its data",
            fix=f"stop it first: appliance --state-dir {ctx.state_dir} down, then run restore again",
        )


def _upload_objects(ctx: AppContext, root: Path, progress: Progress) -> None:
    if not root.is_dir():
        return
    client = s3_client(ctx)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    progress("object-store", "start", f"uploading {len(files)} object(s)")
    buckets = {p.relative_to(root).parts[0] for p in files}
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in sorted(buckets - existing):
        client.create_bucket(Bucket=bucket)
    for path in files:
        bucket, *key = path.relative_to(root).parts
        client.upload_file(str(path), bucket, "/".join(key))
    progress("object-store", "done", f"{len(files)} object(s)")


Moved = list[tuple[Path, Path | None]]
"""(destination, where its old folder was put aside) for each part swapped in."""


def _refill_store(ctx: AppContext, objects: Path, progress: Progress) -> None:
    """Start the bundled store alone on its fresh folder, upload the archive's objects, stop it."""
    fresh = AppContext(ctx.answers, ctx.state_dir, None)  # its keys are the restored secrets now
    progress("object-store", "start", f"starting {ctx.store_kind} alone to upload the objects")
    with running_alone(fresh):
        _upload_objects(fresh, objects, progress)


def _swap_in(pairs: list[tuple[Path, Path]], progress: Progress) -> Moved:
    """Move each staged folder onto its destination, the old one renamed aside; all or nothing.
    The caller commits (``_drop_aside``) or undoes (``_put_back``) the result."""
    moved: Moved = []
    stamp = time.strftime("%Y%m%d%H%M%S")
    try:
        for staged, dest in pairs:
            progress(dest.name, "start", f"restoring into {dest}")
            aside = None
            if dest.exists():
                aside = dest.with_name(f".{dest.name}.pre-restore-{stamp}")
                os.replace(dest, aside)
            moved.append((dest, aside))
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.move(str(staged), str(dest))
            progress(dest.name, "done", str(dest))
    except BaseException:
        _put_back(moved)
        raise
    return moved


def _put_back(moved: Moved) -> None:
    for dest, aside in reversed(moved):
        shutil.rmtree(dest, ignore_errors=True)
        if aside is not None:
            os.replace(aside, dest)


def _drop_aside(moved: Moved) -> None:
    for _dest, aside in moved:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _remove_new(target: Path, before: set[str]) -> None:
    """Remove what appeared at the top of ``target`` since ``before`` (the lock file stays)."""
    for path in target.iterdir():
        if path.name not in before and path.name != LOCK_FILE:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def restore(
    archive: Path,
    state_dir: Path,
    secret: Secret | None = None,
    runtime: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore ``archive`` into ``state_dir`` (see the module docstring for the order)."""
    started = time.monotonic()
    say = progress or (lambda *_: None)
    target = state_dir.expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".appliance-restore-", dir=target.parent) as tmp:
        staged = Path(tmp)
        staged.chmod(0o700)
        say("archive", "start", f"reading and checking {archive}")
        manifest = scan(archive, secret, into=staged)
        say("archive", "done", f"{len(manifest.members)} member(s) match the manifest")
        if is_newer(manifest.appliance_version, manifest.state_format):
            raise StateTooNewError(str(archive), manifest.appliance_version, manifest.state_format)
        if not (staged / "answers" / ANSWERS_NAME).is_file():
            raise ApplianceError(
                f"{archive} holds no answers file", fix="use an archive made by `appliance backup`"
            )
        answers_data = yaml.safe_load((staged / "answers" / ANSWERS_NAME).read_text()) or {}
        answers_data = answers_data | {"state_dir": str(target)} | ({"runtime": runtime} if runtime else {})
        probe = staged / "answers-probe.yaml"
        probe.write_text(yaml.safe_dump(restoring_answers(answers_data, manifest.store_kind)))
        ctx = AppContext.create(load_answers(probe), None, target)
        if not _is_empty(target):
            if not (confirm and confirm(f"{target} holds a stack's data; replace it with the archive's?")):
                raise ApplianceError(
                    f"{target} is not empty; nothing was changed", fix="pass --yes to replace it"
                )
            _check_stack_down(ctx)
        with state_lock(target):
            before = {p.name for p in target.iterdir()}
            made_before = stack_objects(ctx)
            try:
                answers_path = _restore_locked(ctx, staged, target, runtime, before, say)
            except BaseException:
                # A restore onto podman or docker makes the stack's volumes (and the network its
                # store starts on); one that fails takes back what it made, so that the next `up`
                # does not start on empty volumes.
                remove_made_since(ctx, made_before)
                raise
    return RestoreResult(target, answers_path, manifest, time.monotonic() - started)


def _restore_locked(
    ctx: AppContext, staged: Path, target: Path, runtime: str | None, before: set[str], say: Progress
) -> Path:
    """The part of ``restore`` that writes: objects, folders swapped in, the answers file."""
    bundled = is_bundled(ctx)
    if ctx.store_is_s3 and not bundled:
        _upload_objects(ctx, staged / "s3", say)
    layout = layout_for(ctx, create=True)
    pairs = [(staged / part, layout.folders[part]) for part in FOLDER_PARTS if (staged / part).is_dir()]
    missing = [part for part in FOLDER_PARTS if (staged / part).is_dir() and part not in layout.folders]
    if missing:
        raise ApplianceError(f"no place for {', '.join(missing)} on runtime {ctx.answers.runtime}")
    secrets = staged / "secrets"
    if secrets.is_dir():
        secrets.chmod(0o700)
        for path in secrets.iterdir():
            path.chmod(0o600)
        pairs.insert(0, (secrets, layout.secrets))
    if bundled:
        empty = staged / "store-data"
        empty.mkdir(mode=0o700)
        pairs.append((empty, data_folder(ctx, create=True)))
    moved = _swap_in(pairs, say)
    try:
        if bundled and (staged / "s3").is_dir():
            _refill_store(ctx, staged / "s3", say)
        answers_path = _write_answers(staged, target, runtime)
    except BaseException:
        _put_back(moved)
        _remove_new(target, before)
        raise
    _drop_aside(moved)
    return answers_path

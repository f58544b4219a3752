"""``appliance backup``: one tar archive of everything stateful, taken while the stack runs.

The archive is created 0600 (``O_CREAT|O_EXCL`` with that mode: it is never readable by others,
not even for a moment), written under a temporary name beside its final one and renamed into
place after an fsync, so a crash or Ctrl-C leaves no half archive under the real name. Layers:
tar (stream mode) -> gzip (level 1: datasets and databases shrink, ONNX files barely, and the two
cores stay free for serving) -> optional encryption (appliance.backup.crypto) -> the file.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import json
import os
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from appliance import __version__
from appliance.backup import snapshot
from appliance.backup.crypto import EncryptingWriter, Secret
from appliance.backup.layout import FOLDER_PARTS, layout_for
from appliance.backup.manifest import INFO_NAME, MANIFEST_NAME, HashingReader, Manifest, Member
from appliance.backup.store import readable
from appliance.context import AppContext
from appliance.errors import ApplianceError
from appliance.state_version import STATE_FORMAT, require_compatible

SUFFIX = ".tar.gz"
ENCRYPTED_SUFFIX = ".tar.gz.enc"
Progress = Callable[[str, str, str], None]
"""(part, step, message): ``step`` is ``start`` or ``done``."""


@dataclass(frozen=True)
class BackupResult:
    path: str
    manifest: Manifest
    seconds: float
    archive_bytes: int


def archive_name(encrypted: bool, when: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return f"appliance-backup-{stamp}{ENCRYPTED_SUFFIX if encrypted else SUFFIX}"


def default_dir(ctx: AppContext) -> Path:
    """``STATE/backups`` (left out of the archives themselves)."""
    return ctx.state_dir / "backups"


def _target(ctx: AppContext, to: str | None, encrypted: bool) -> Path:
    if to is None:
        folder = default_dir(ctx)
    else:
        folder = Path(to).expanduser()
        if not (to.endswith("/") or folder.is_dir()):
            if folder.exists():
                raise ApplianceError(
                    f"{folder} exists", fix="name a new file, or a folder to put the archive in"
                )
            folder.parent.mkdir(parents=True, exist_ok=True)
            return folder
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / archive_name(encrypted)


def _add(tar: tarfile.TarFile, name: str, mode: int, size: int, source: IO[bytes] | Any) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(time.time())
    reader = HashingReader(source)
    tar.addfile(info, reader)
    if reader.count != size:
        raise ApplianceError(f"{name} changed size while it was read ({size} -> {reader.count} bytes)")
    return Member(name, size, reader.hexdigest(), mode)


def _entries(ctx: AppContext, staging: Path, manifest: Manifest) -> Iterator[tuple[str, snapshot.Entry]]:
    layout = layout_for(ctx)
    yield "answers", snapshot.answers_entry(ctx)
    for entry in snapshot.secret_entries(layout):
        yield "secrets", entry
    for part, entry in list(snapshot.sqlite_entries(layout, staging)):
        if entry.name == "mlflow/mlflow.db":
            manifest.mlflow_schema = snapshot.alembic_revision(staging / "mlflow-mlflow.db")
        yield f"{part}-db", entry
    for part in FOLDER_PARTS:
        if part in layout.folders:
            for entry in snapshot.folder_entries(part, layout.folders[part]):
                yield part, entry
    if ctx.store_is_s3:
        for entry in snapshot.s3_entries(ctx):
            yield "object-store", entry


def _mlflow_version() -> str | None:
    try:
        return importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return None


def create_backup(
    ctx: AppContext, to: str | None = None, secret: Secret | None = None, progress: Progress | None = None
) -> BackupResult:
    """Write one archive of ``ctx``'s state; returns where it is and its manifest. With
    ``to="s3://BUCKET/PREFIX"`` the archive is written locally first, then uploaded and removed."""
    require_compatible(ctx.state_dir)
    if not ctx.state_dir.is_dir():
        raise ApplianceError(
            f"no state directory at {ctx.state_dir}", fix="pass --state-dir, or run `appliance up`"
        )
    started = time.monotonic()
    remote = to if to and to.startswith("s3://") else None
    scratch = tempfile.TemporaryDirectory(prefix="appliance-backup-")
    with scratch as tmp:
        os.chmod(tmp, 0o700)
        target = (
            Path(tmp) / archive_name(secret is not None) if remote else _target(ctx, to, secret is not None)
        )
        with readable(ctx):
            manifest = _write(ctx, target, secret, Path(tmp), progress or (lambda *_: None))
        size = target.stat().st_size
        where = str(target)
        if remote:
            from appliance.backup.remote import upload

            where = upload(ctx, target, remote)
    return BackupResult(where, manifest, time.monotonic() - started, size)


def _write(
    ctx: AppContext, target: Path, secret: Secret | None, staging: Path, progress: Progress
) -> Manifest:
    manifest = Manifest(
        appliance_version=__version__,
        state_format=STATE_FORMAT,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        runtime=ctx.answers.runtime,
        store_kind=ctx.store_kind,
        mlflow_version=_mlflow_version(),
    )
    tmp = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            info = manifest.info()
            sink: Any = EncryptingWriter(raw, secret, info) if secret else raw
            with (
                gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                text = json.dumps(info, indent=1).encode()
                manifest.add("info", _add(tar, INFO_NAME, 0o600, len(text), io.BytesIO(text)))
                current = ""
                for part, entry in _entries(ctx, staging, manifest):
                    if part != current:
                        if current:
                            _done(progress, current, manifest)
                        progress(part, "start", "reading")
                        current = part
                    with entry.open() as source:
                        manifest.add(part, _add(tar, entry.name, entry.mode, entry.size, source))
                if current:
                    _done(progress, current, manifest)
                body = manifest.to_json()
                _add(tar, MANIFEST_NAME, 0o600, len(body), io.BytesIO(body))
            if secret:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def _done(progress: Progress, part: str, manifest: Manifest) -> None:
    stats = manifest.parts.get(part, {"files": 0, "bytes": 0})
    progress(part, "done", f"{stats['files']} file(s), {stats['bytes'] / 1e6:.1f} MB")

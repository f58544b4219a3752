"""What goes into a backup, part by part, read while the stack runs.

Each part yields entries (archive name, mode, size, a way to open the bytes). Files are read
where they are; SQLite databases (MLflow's tracking and users databases, the pipeline run
records) are first copied with SQLite's online backup API, which gives a consistent snapshot
while MLflow and the controller keep writing, and never blocks them for long. Databases are
snapshotted before the folders they point into, so every artifact a snapshot names is already on
disk when the folders are read (newer artifacts may come along; none is missing).

With an S3 object store (MinIO, SeaweedFS, any S3) the datasets, models and MLflow buckets are
read through the stack's data connection instead of the state directory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from appliance.backup.layout import SKIP, SQLITE, Layout
from appliance.context import AppContext

Opener = Callable[[], IO[bytes] | Any]


@dataclass(frozen=True)
class Entry:
    """One file to put into the archive."""

    name: str
    mode: int
    size: int
    open: Opener


def sqlite_snapshot(source: Path, target: Path) -> None:
    """A consistent copy of the database ``source`` (live writers allowed), read-only on its side."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=1024)
        finally:
            dst.close()
    finally:
        src.close()
    target.chmod(0o600)


def alembic_revision(db: Path) -> str | None:
    """MLflow's schema revision in a (snapshotted) tracking database."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def file_entry(name: str, path: Path) -> Entry:
    info = path.stat()
    return Entry(name, info.st_mode & 0o777, info.st_size, lambda: path.open("rb"))


def folder_entries(part: str, root: Path) -> Iterator[Entry]:
    """Every regular file under ``root`` (sorted), but the part's SKIP paths; links are not followed."""
    if not root.is_dir():
        return
    skipped = [root / s for s in SKIP.get(part, ())]
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skipped):
            continue
        if path.is_file() and not path.is_symlink():
            yield file_entry(f"{part}/{path.relative_to(root).as_posix()}", path)


def sqlite_entries(layout: Layout, staging: Path) -> Iterator[tuple[str, Entry]]:
    """Snapshots of every SQLite database, taken now (before any folder is read)."""
    taken: list[tuple[str, Entry]] = []
    for part, names in SQLITE.items():
        root = layout.folders.get(part)
        for name in names:
            if root is None or not (root / name).is_file():
                continue
            copy = staging / f"{part}-{name}"
            sqlite_snapshot(root / name, copy)
            taken.append((part, file_entry(f"{part}/{name}", copy)))
    yield from taken


def answers_entry(ctx: AppContext) -> Entry:
    """The answers file as the user wrote it (or, without one, the defaults spelled out)."""
    if ctx.answers_path is not None and ctx.answers_path.is_file():
        return file_entry("answers/appliance.yaml", ctx.answers_path)
    import io

    import yaml

    text = yaml.safe_dump(ctx.answers.model_dump(mode="json", exclude_none=True), sort_keys=False).encode()
    return Entry("answers/appliance.yaml", 0o600, len(text), lambda: io.BytesIO(text))


def secret_entries(layout: Layout) -> Iterator[Entry]:
    root = layout.secrets
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_file() and not path.is_symlink():
                entry = file_entry(f"secrets/{path.name}", path)
                yield Entry(entry.name, 0o600, entry.size, entry.open)


def s3_client(ctx: AppContext) -> Any:
    """boto3 S3 client on the stack's data connection, with the store's admin key (a backup
    reads, and a restore writes, every bucket)."""
    from appliance.dataconn.client import client_from_env

    return client_from_env(ctx.connection_env(mlflow_account=False, identity="admin"))


def store_buckets(ctx: AppContext) -> list[str]:
    store = ctx.answers.object_store
    return list(dict.fromkeys([store.datasets_bucket, store.models_bucket, store.mlflow_bucket]))


def s3_entries(ctx: AppContext) -> Iterator[Entry]:
    """Every object of the stack's buckets, streamed from the store (``s3/BUCKET/KEY``). A bucket
    missing from the bundled store holds nothing to back up (its buckets job, which makes them,
    has not run yet: a stack never brought up whole); a missing one in an external store is an
    error, as a wrong name there would otherwise go unnoticed."""
    from appliance.backup.store import is_bundled

    client = s3_client(ctx)
    bundled = is_bundled(ctx)
    for bucket in store_buckets(ctx):
        if bundled and not _bucket_exists(client, bucket):
            continue
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") and obj["Size"] == 0:
                    continue

                def opener(bucket: str = bucket, key: str = key) -> Any:
                    return client.get_object(Bucket=bucket, Key=key)["Body"]

                yield Entry(f"s3/{bucket}/{key}", 0o600, int(obj["Size"]), opener)


def _bucket_exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except client.exceptions.ClientError as err:
        if str(err.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
            return False
        raise
    return True

"""Backups kept in S3 (``s3://BUCKET/PREFIX``): upload, list, download.

The client is the stack's own data connection when the stack has an S3 store (so a backup can go
to the same MinIO/SeaweedFS/S3, another bucket), otherwise boto3's usual environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``). A backup stored next to
the data it protects does not survive the loss of that store: prefer another bucket or host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.context import AppContext
from appliance.errors import ApplianceError


def split(uri: str) -> tuple[str, str]:
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ApplianceError(f"{uri} names no bucket", fix="use s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def client(ctx: AppContext) -> Any:
    if ctx.store_is_s3:
        from appliance.backup.snapshot import s3_client

        return s3_client(ctx)
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def upload(ctx: AppContext, archive: Path, uri: str) -> str:
    bucket, prefix = split(uri)
    key = f"{prefix}/{archive.name}" if prefix else archive.name
    client(ctx).upload_file(str(archive), bucket, key)
    return f"s3://{bucket}/{key}"


def listing(ctx: AppContext, uri: str) -> list[dict[str, Any]]:
    """Archives under ``uri``: name, size, modification time (newest first)."""
    bucket, prefix = split(uri)
    found = []
    pages = client(ctx).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name.startswith("appliance-backup-"):
                found.append({"path": f"s3://{bucket}/{obj['Key']}", "bytes": obj["Size"], "name": name})
    return sorted(found, key=lambda f: f["name"], reverse=True)


def download(ctx: AppContext, uri: str, folder: Path) -> Path:
    bucket, key = split(uri)
    target = folder / key.rsplit("/", 1)[-1]
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    client(ctx).download_file(bucket, key, str(target))
    return target

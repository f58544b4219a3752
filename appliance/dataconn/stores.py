"""Two byte stores behind one small interface: an S3 bucket (boto3) or a local folder.

The rest of the data connection only needs to list, read and write whole objects, so a store is
kept to those four operations. S3 errors are translated into :mod:`appliance.dataconn.errors`
with the endpoint named, because a raw botocore traceback tells a user nothing about the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from appliance.dataconn.errors import StoreAccessError, StoreUnreachableError


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key inside the store, size in bytes and last modification (UTC)."""

    key: str
    size: int
    modified: datetime


class Store(Protocol):
    """What the data connection needs from a bucket or folder."""

    location: str

    def ensure(self) -> bool: ...
    def exists(self) -> bool: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...
    def uri(self, key: str) -> str: ...


class FileStore:
    """A folder on local disk; keys are ``/``-separated paths below it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def ensure(self) -> bool:
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        return created

    def exists(self) -> bool:
        return self.root.is_dir()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith("."):
                stat = path.stat()
                out.append(ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))
        return out

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def uri(self, key: str) -> str:
        return str(self.root / key)


class S3Store:
    """One S3 bucket reached through boto3 (MinIO, SeaweedFS, Garage, AWS: all plain S3)."""

    def __init__(self, bucket: str, endpoint: str, access_key: str, secret_key: str, region: str) -> None:
        from appliance.dataconn.client import s3_client

        self.bucket = bucket
        self.endpoint = endpoint
        self.location = f"s3://{bucket} at {endpoint}"
        self.client: Any = s3_client(endpoint, access_key, secret_key, region)

    @contextmanager
    def _translate(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            yield
        except EndpointConnectionError as err:
            raise StoreUnreachableError(self.endpoint, "connection refused or host unknown") from err
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "NoSuchKey", "404"):
                raise
            where = f"s3://{self.bucket} at {self.endpoint}"
            raise StoreAccessError(where, f"{code or 'error'}: {err}", code) from err
        except BotoCoreError as err:
            raise StoreUnreachableError(self.endpoint, type(err).__name__) from err

    def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        with self._translate():
            return fn(**kwargs)

    def exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
        except ClientError:
            return False
        return True

    def ensure(self) -> bool:
        """Create the bucket only when it is missing, so the call is safe to repeat."""
        if self.exists():
            return False
        self._call(self.client.create_bucket, Bucket=self.bucket)
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        from botocore.exceptions import ClientError

        out: list[ObjectInfo] = []
        try:
            with self._translate():
                paginator = self.client.get_paginator("list_objects_v2")
                pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for page in pages:
                    for obj in page.get("Contents", []):
                        out.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"]))
        except ClientError:  # missing bucket: nothing stored yet
            return []
        return out

    def get(self, key: str) -> bytes:
        body = self._call(self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        with self._translate():
            data: bytes = body.read()
        return data

    def put(self, key: str, data: bytes) -> None:
        """One PUT: S3 makes the object visible only once the whole body arrived, so a reader
        (``newest version``) never sees a half-written one, even if the writer or the store dies
        mid-upload (tests/integration/test_object_store.py kills the store to check)."""
        self._call(self.client.put_object, Bucket=self.bucket, Key=key, Body=data)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

"""Reading an archive: one pass over its members, each hashed, checked against the manifest.

The same pass serves ``backup verify`` (bytes discarded) and ``restore`` (bytes written into a
staging folder): nothing outside that folder is touched until the whole archive, manifest
included, has been read and matched. Damage shows up as one of: a gzip or tar error (a flipped
byte in compressed data or a header), a checksum mismatch (named member), a missing manifest
(truncated), or, for an encrypted archive, a chunk that does not authenticate.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from appliance.backup.crypto import MAGIC, DecryptingReader, EncryptionError, Secret, read_header
from appliance.backup.manifest import (
    INFO_NAME,
    MANIFEST_NAME,
    BadArchiveError,
    HashingReader,
    Manifest,
    Member,
    compare,
)

OnMember = Callable[[Member], None]


@contextmanager
def _plain_stream(path: Path, secret: Secret | None) -> Iterator[tuple[IO[bytes] | Any, Any]]:
    try:
        raw = path.open("rb")
    except OSError as err:
        raise BadArchiveError(str(path), f"cannot be read ({err.strerror})") from err
    with raw:
        head = raw.read(len(MAGIC))
        raw.seek(0)
        if head == MAGIC:
            reader = DecryptingReader(raw, secret, str(path))
            yield reader, reader
        else:
            yield raw, None


def _safe_name(name: str, source: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BadArchiveError(source, f"member {name!r} points outside the archive's folders")
    return path.as_posix()


def scan(
    path: Path, secret: Secret | None = None, into: Path | None = None, on_member: OnMember | None = None
) -> Manifest:
    """Read every member of ``path`` (decrypting with ``secret`` when it is encrypted), check each
    against the manifest, and return the manifest. With ``into``, members are written below it
    (modes kept). Raises BadArchiveError (or EncryptionError) on the first problem."""
    source = str(path)
    seen: list[Member] = []
    manifest_bytes: bytes | None = None
    last = "(the start)"
    try:
        with (
            _plain_stream(path, secret) as (stream, decrypting),
            gzip.GzipFile(fileobj=stream, mode="rb") as gz,
        ):
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        raise BadArchiveError(source, f"member {info.name!r} is not a regular file")
                    name = _safe_name(info.name, source)
                    if manifest_bytes is not None:
                        raise BadArchiveError(source, f"member {name} follows the manifest (altered archive)")
                    fileobj = tar.extractfile(info)
                    assert fileobj is not None
                    if name == MANIFEST_NAME:
                        manifest_bytes = fileobj.read()
                        continue
                    member = _consume(fileobj, name, info.mode & 0o777, into)
                    seen.append(member)
                    last = name
                    if on_member:
                        on_member(member)
            while gz.read(1 << 20):  # to the gzip trailer: its CRC and length are checked there
                pass
            if decrypting is not None:
                decrypting.finish()
    except (tarfile.TarError, zlib.error, gzip.BadGzipFile, EOFError, OSError) as err:
        raise BadArchiveError(source, f"damaged or truncated after member {last} ({err})") from err
    if manifest_bytes is None:
        raise BadArchiveError(source, f"has no manifest: truncated after member {last}")
    manifest = Manifest.from_json(manifest_bytes, source)
    compare(manifest, seen, source)
    return manifest


def _consume(fileobj: IO[bytes], name: str, mode: int, into: Path | None) -> Member:
    reader = HashingReader(fileobj)
    if into is None:
        while reader.read(1 << 20):
            pass
    else:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode or 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read(1 << 20):
                out.write(chunk)
    return Member(name, reader.count, reader.hexdigest(), mode)


def encryption_of(path: Path) -> dict[str, Any] | None:
    """The encryption header of an archive (None when it is not encrypted); reads a few bytes."""
    with path.open("rb") as raw:
        if raw.read(len(MAGIC)) != MAGIC:
            return None
        try:
            return read_header(raw, str(path))[0]
        except EncryptionError:
            return {"kdf": "damaged"}


def read_info(path: Path) -> dict[str, Any] | None:
    """What wrote an archive and when: the encryption header's copy, or the first member (only
    the start of the file is read). None when it is not a readable appliance backup."""
    header = encryption_of(path)
    if header is not None:
        info = header.get("info")
        return dict(info, encrypted=header.get("kdf")) if isinstance(info, dict) else None
    try:
        with tarfile.open(path, "r|gz") as tar:
            first = tar.next()
            if first is None or first.name != INFO_NAME:
                return None
            fileobj = tar.extractfile(first)
            data = json.loads(fileobj.read()) if fileobj else None
            return dict(data, encrypted=None) if isinstance(data, dict) else None
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError):
        return None

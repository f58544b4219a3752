"""The bundle manifest: what an offline bundle holds, with the sha256 of every file in it.

A bundle is a plain tar (or the folder it unpacks to) with ``manifest.json`` at its top. Verifying
hashes every member as a stream and compares with the manifest, so a tampered, missing or extra
file is found and named before anything is loaded onto an air-gapped machine.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.bundle.signing import Signer

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
"""The signature of the manifest (``appliance.bundle.signing``); the one file the manifest cannot list."""
FORMAT_VERSION = 1
CHUNK = 1 << 20


class BundleError(ApplianceError):
    """A bundle is unreadable, incomplete or altered."""

    exit_code = 2


@dataclass
class Manifest:
    """``manifest.json``: the profile it was made for, images per service, and file hashes."""

    profile: str
    appliance_version: str
    created: str
    images: dict[str, str] = field(default_factory=dict)
    """Service name -> image tag."""
    archives: dict[str, str] = field(default_factory=dict)
    """Image tag -> archive path inside the bundle."""
    files: dict[str, str] = field(default_factory=dict)
    """Path inside the bundle -> sha256 hex digest (every file but the manifest)."""
    sizes: dict[str, int] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def holds(self, folder: str) -> bool:
        """Whether any file of the bundle is under ``folder`` (``wheelhouse``, ``debs``, ...)."""
        return any(name.startswith(folder + "/") for name in self.files)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            data: dict[str, Any] = json.loads(text)
            if data.get("version") != FORMAT_VERSION:
                raise BundleError(
                    f"{source}: manifest version {data.get('version')!r} is not {FORMAT_VERSION}",
                    fix="create the bundle with this version of the appliance",
                )
            return cls(**data)
        except (ValueError, TypeError) as err:
            raise BundleError(f"{source}: manifest.json is not a valid manifest: {err}") from err


def sha256_stream(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _members(bundle: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """(path, open stream) of every regular file in a bundle tar or folder."""
    if bundle.is_dir():
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            with path.open("rb") as fh:
                yield path.relative_to(bundle).as_posix(), fh
        return
    try:
        with tarfile.open(bundle, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    stream = tar.extractfile(member)
                    assert stream is not None
                    yield member.name.removeprefix("./"), stream
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"{bundle} is not a readable bundle: {err}", fix="copy the bundle again") from err


def read_manifest(bundle: Path) -> Manifest:
    """The manifest alone (a tar's first member, so this reads little)."""
    if not bundle.exists():
        raise BundleError(f"no bundle at {bundle}", fix="check the path")
    for name, stream in _members(bundle):
        if name == MANIFEST:
            return Manifest.from_json(stream.read().decode(), str(bundle))
    raise BundleError(f"{bundle} has no {MANIFEST}", fix="create it with `appliance bundle create`")


@dataclass(frozen=True)
class Verification:
    """What differs between a bundle and its manifest (all empty: intact), and the manifest's
    exact bytes and signature as read in the same pass (for ``signing.check_signature``)."""

    tampered: list[str]
    missing: list[str]
    extra: list[str]
    manifest_bytes: bytes = field(default=b"", repr=False)
    signature: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.tampered or self.missing or self.extra)

    def describe(self) -> str:
        found = {"tampered": self.tampered, "missing": self.missing, "extra": self.extra}
        parts = [f"{what}: {', '.join(names)}" for what, names in found.items() if names]
        return "; ".join(parts) or "intact"


def verify(bundle: Path) -> tuple[Manifest, Verification]:
    """Hash every file of the bundle and compare with its manifest."""
    manifest: Manifest | None = None
    raw, signature = b"", None
    seen: dict[str, str] = {}
    for name, stream in _members(bundle):
        if name == MANIFEST:
            raw = stream.read()
            manifest = Manifest.from_json(raw.decode(), str(bundle))
        elif name == SIGNATURE:
            signature = stream.read(1 << 16)
        else:
            seen[name] = sha256_stream(stream)
    if manifest is None:
        raise BundleError(f"{bundle} has no {MANIFEST}", fix="create it with `appliance bundle create`")
    expected = manifest.files
    result = Verification(
        tampered=sorted(n for n in seen if n in expected and seen[n] != expected[n]),
        missing=sorted(set(expected) - set(seen)),
        extra=sorted(set(seen) - set(expected)),
        manifest_bytes=raw,
        signature=signature,
    )
    return manifest, result


def require_intact(bundle: Path) -> Manifest:
    """The manifest of an intact bundle, or a BundleError naming every difference (the hashes
    only: ``require_trusted`` also checks who signed it)."""
    manifest, result = verify(bundle)
    _raise_unless_intact(bundle, result)
    return manifest


def require_trusted(bundle: Path) -> Manifest:
    """The manifest of a bundle that is intact and signed by a trusted key, else a BundleError
    saying which of the two it is not (the signature is checked first: a manifest altered after
    signing is named as such)."""
    return trusted_manifest(bundle)[0]


def trusted_manifest(bundle: Path) -> tuple[Manifest, Signer]:
    """``require_trusted``, with who signed the bundle."""
    from appliance.bundle.signing import check_signature  # cryptography: only for bundles

    manifest, result = verify(bundle)
    signer = check_signature(bundle, result.manifest_bytes, result.signature)
    _raise_unless_intact(bundle, result)
    return manifest, signer


def _raise_unless_intact(bundle: Path, result: Verification) -> None:
    if not result.ok:
        raise BundleError(
            f"{bundle} does not match its manifest: {result.describe()}",
            fix="copy the bundle again from where it was created, or create a new one",
        )

"""The manifest every backup archive ends with: what wrote it and every member's checksum.

It is the archive's last member (``MANIFEST.json``) so each member can be hashed while it is
written, in one pass, with no staging copy of the data. A reader hashes the members as they go by
and compares at the end; a truncated archive has no manifest and is refused for that.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from appliance.errors import ApplianceError

MANIFEST_NAME = "MANIFEST.json"
INFO_NAME = "INFO.json"
"""The first member: what wrote the archive and when (``backup list`` reads only this)."""
ARCHIVE_FORMAT = 1
"""The layout of the archive itself (members, manifest fields); a reader refuses a newer one."""
KIND = "appliance-backup"


class BadArchiveError(ApplianceError):
    """An archive that is not a readable, complete, unaltered appliance backup."""

    exit_code = 2

    def __init__(self, source: str, problem: str) -> None:
        self.source, self.problem = source, problem
        super().__init__(
            f"{source}: {problem}",
            fix="nothing was changed; use another backup (`appliance backup list`), "
            "or make a new one with `appliance backup`",
        )


@dataclass(frozen=True)
class Member:
    """One file in the archive."""

    name: str
    size: int
    sha256: str
    mode: int


@dataclass
class Manifest:
    """What wrote the archive, when, and every member in the order they were written."""

    appliance_version: str
    state_format: int
    created: str
    runtime: str
    store_kind: str
    mlflow_version: str | None = None
    mlflow_schema: str | None = None
    """MLflow's alembic revision in the backed-up tracking database (None without MLflow)."""
    members: list[Member] = field(default_factory=list)
    parts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per part (secrets, mlflow, data, ...): files and bytes."""
    format: int = ARCHIVE_FORMAT
    kind: str = KIND

    def add(self, part: str, member: Member) -> None:
        self.members.append(member)
        stats = self.parts.setdefault(part, {"files": 0, "bytes": 0})
        stats["files"] += 1
        stats["bytes"] += member.size

    def info(self) -> dict[str, Any]:
        """The summary ``backup list`` shows (no checksums)."""
        keys = ("appliance_version", "state_format", "created", "runtime", "store_kind", "mlflow_version")
        return {k: getattr(self, k) for k in keys}

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.members)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Manifest:
        try:
            raw: dict[str, Any] = json.loads(data)
            if raw.get("kind") != KIND:
                raise ValueError(f"kind is {raw.get('kind')!r}, not {KIND!r}")
            if int(raw.get("format", 0)) > ARCHIVE_FORMAT:
                raise BadArchiveError(
                    source,
                    f"archive format {raw['format']} is newer than this appliance reads ({ARCHIVE_FORMAT}); "
                    f"it was written by appliance {raw.get('appliance_version')}",
                )
            members = [Member(**m) for m in raw.pop("members")]
            return cls(members=members, **raw)
        except BadArchiveError:
            raise
        except (ValueError, TypeError, KeyError) as err:
            raise BadArchiveError(source, f"its manifest is unreadable ({err})") from err


class HashingReader:
    """Wraps a readable file object and hashes (and counts) what goes through it."""

    def __init__(self, inner: IO[bytes] | Any) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.inner.read(n)
        self.digest.update(data)
        self.count += len(data)
        return data

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def compare(manifest: Manifest, seen: list[Member], source: str) -> None:
    """Raise BadArchiveError naming the first member whose bytes differ from the manifest, or one
    the manifest lists that the archive lacks (or holds without listing)."""
    expected = {m.name: m for m in manifest.members}
    for member in seen:
        want = expected.pop(member.name, None)
        if want is None:
            raise BadArchiveError(source, f"member {member.name} is not in the manifest (altered archive)")
        if (want.size, want.sha256) != (member.size, member.sha256):
            raise BadArchiveError(
                source,
                f"member {member.name} is damaged: sha256 {member.sha256[:12]}… ({member.size} bytes), "
                f"the manifest says {want.sha256[:12]}… ({want.size} bytes)",
            )
    if expected:
        first = next(iter(expected))
        raise BadArchiveError(source, f"member {first} is missing ({len(expected)} listed but absent)")

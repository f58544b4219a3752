"""Using a bundle offline: verify it, then load its images into the chosen engine.

Image archives stream straight from the tar into ``podman load`` / ``docker load`` (no unpacked
copy on disk). An image the engine already holds under the same ID is skipped: the ID is the
config digest named in the archive's own ``manifest.json``, read by seeking through the archive
rather than reading it. The wheelhouse and stacks can be unpacked for image rebuilds or the local
runtime.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from appliance.bundle.manifest import CHUNK, BundleError, Manifest, require_trusted

DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass
class Loaded:
    """What a load did: tags loaded, and tags skipped because the engine had the same image."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def load_bundle(bundle: Path, engine: str) -> tuple[Manifest, Loaded]:
    """Check the signature and every hash, then load every image of the bundle into ``engine``."""
    manifest = require_trusted(bundle)
    return manifest, load_images(bundle, manifest, engine)


def load_images(
    bundle: Path, manifest: Manifest, engine: str, say: Callable[[str], None] | None = None
) -> Loaded:
    """Load the images of an already verified bundle into ``engine``, skipping those it holds."""
    if shutil.which(engine) is None:
        raise BundleError(f"{engine} is not installed", fix="run scripts/setup-containers.sh as root")
    done = Loaded()
    for tag, rel in manifest.archives.items():
        with _archive(bundle, rel) as stream:
            wanted = archive_image_id(stream)
            if wanted is not None and wanted == present_image_id(engine, tag):
                done.skipped.append(tag)
                if say:
                    say(f"{tag}: already in {engine} (image {wanted[:12]}), skipped")
                continue
            stream.seek(0)
            if say:
                size = manifest.sizes.get(rel, 0) / 2**20
                say(f"{tag}: loading into {engine} ({size:.0f} MiB)")
            _load(engine, tag, stream)
            done.loaded.append(tag)
    return done


@contextmanager
def _archive(bundle: Path, rel: str) -> Iterator[IO[bytes]]:
    """An image archive of the bundle as a seekable stream (no copy on disk)."""
    if bundle.is_dir():
        with (bundle / rel).open("rb") as fh:
            yield fh
        return
    with tarfile.open(bundle, "r:*") as tar:
        stream = tar.extractfile(rel)
        if stream is None:
            raise BundleError(f"{bundle}: {rel} is not a file", fix="create the bundle again")
        with stream:
            yield stream


def archive_image_id(stream: IO[bytes]) -> str | None:
    """The image ID (config digest) a docker-archive holds, or None when it cannot tell."""
    try:
        with tarfile.open(fileobj=stream, mode="r:") as inner:
            member = inner.getmember("manifest.json")
            data = inner.extractfile(member)
            if data is None:
                return None
            entries = json.loads(data.read())
    except (tarfile.TarError, KeyError, ValueError, OSError):
        return None
    if not isinstance(entries, list) or len(entries) != 1:
        return None
    found = DIGEST.search(str(entries[0].get("Config", "")))
    return found.group(0) if found else None


def present_image_id(engine: str, tag: str) -> str | None:
    """The ID of ``tag`` in ``engine``'s store (``sha256:`` dropped), or None when absent."""
    proc = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip().removeprefix("sha256:") or None


def _load(engine: str, tag: str, stream: object) -> None:
    # stdout is not read while the archive streams in, so it must not be a pipe that can fill up;
    # stderr (small) is read once stdin is closed.
    proc = subprocess.Popen(
        [engine, "load"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with stream:  # type: ignore[attr-defined]
            while chunk := stream.read(CHUNK):  # type: ignore[attr-defined]
                proc.stdin.write(chunk)
    except BrokenPipeError:
        pass  # the engine gave up early; its exit status and stderr say why
    finally:
        proc.stdin.close()
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        raise BundleError(f"{engine} load of {tag} failed: {err.decode(errors='replace').strip()[-400:]}")


def unpack(bundle: Path, dest: Path, prefix: str, verified: bool = False) -> Path:
    """Extract the members under ``prefix`` (``wheelhouse``, ``stacks``) into ``dest``.

    ``verified``: the caller has just checked every hash, so they are not checked again.
    """
    if not verified:
        require_trusted(bundle)
    dest.mkdir(parents=True, exist_ok=True)
    if bundle.is_dir():
        shutil.copytree(bundle / prefix, dest / prefix, dirs_exist_ok=True)
        return dest / prefix
    with tarfile.open(bundle, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "/") and m.isfile()]
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix

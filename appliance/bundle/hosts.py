"""What a cluster's hosts install from an offline bundle (``cluster.bundle``): its debs and its
wheelhouse, verified on the controller before any host is touched.

The bundle's signature and every file's sha256 are checked, the two folders unpacked beside the
cluster's state, and the unpacked files hashed against the manifest again, so what the hosts are
sent is what was verified. The roles get the debs' variables (``appliance.bundle.debs.host_vars``)
and the wheelhouse's folder, which ``appliance cluster`` packs into the one tar each host installs
its virtualenv from with ``pip --no-index`` (``pack_wheelhouse``).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path
from typing import Any

from appliance.bundle.debs import CLOSURE, DEBS_DIR, host_vars
from appliance.bundle.load import unpack
from appliance.bundle.manifest import BundleError, require_trusted

WHEELHOUSE_DIR = "wheelhouse"


def verified_for_hosts(bundle: Path, dest: Path) -> tuple[dict[str, Any], Path | None]:
    """Verify ``bundle``, unpack its ``debs/`` and ``wheelhouse/`` into ``dest`` (replacing what an
    earlier run left), hash them again; return the roles' variables for the debs and the
    wheelhouse's folder (None: the bundle has none)."""
    manifest = require_trusted(bundle)
    parts = [part for part in (DEBS_DIR, WHEELHOUSE_DIR) if manifest.holds(part)]
    if not parts:
        raise BundleError(
            f"{bundle} holds neither debs nor wheels for the cluster's hosts",
            fix="make it with `appliance bundle create --debs` on a Debian 12 machine, from an answers "
            "file with a cluster section, or remove cluster.bundle when the hosts install from their "
            "own apt sources and virtualenvs",
        )
    if DEBS_DIR in parts and f"{DEBS_DIR}/{CLOSURE}" not in manifest.files:
        raise BundleError(
            f"{bundle}'s debs have no {CLOSURE}: it was not made for a cluster",
            fix="make it again with `appliance bundle create --debs` from this version of the appliance",
        )
    wanted = {n: d for n, d in manifest.files.items() if n.split("/", 1)[0] in parts}
    for part in parts:
        shutil.rmtree(dest / part, ignore_errors=True)
        unpack(bundle, dest, part, verified=True)
    for name, digest in sorted(wanted.items()):
        if hashlib.sha256((dest / name).read_bytes()).hexdigest() != digest:
            raise BundleError(
                f"{dest / name} changed after {bundle} was verified",
                fix="run the same command again (nothing was sent to the hosts)",
            )
    debs = host_vars(dest / DEBS_DIR) if DEBS_DIR in parts else {}
    return debs, dest / WHEELHOUSE_DIR if WHEELHOUSE_DIR in parts else None


def pack_wheelhouse(folder: Path, out: Path) -> Path:
    """``folder``'s wheels as one tar at ``out`` for the hosts, the same bytes for the same wheels
    (sorted names, no times or owners), so that a host which has it already is sent nothing: the
    roles copy one file and unpack it on the host, where copying a folder checks each of hundreds
    of wheels over SSH on every run."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise BundleError(
            f"the wheelhouse {folder} holds no wheels",
            fix="give cluster.wheelhouse a folder of wheels (an offline bundle's wheelhouse), or make "
            "the bundle again without --no-wheelhouse",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_suffix(".tmp")
    with tarfile.open(staging, "w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in wheels:
            info = tarfile.TarInfo(wheel.name)
            info.size, info.mode, info.mtime = wheel.stat().st_size, 0o644, 0
            with wheel.open("rb") as data:
                tar.addfile(info, data)
    staging.replace(out)
    return out

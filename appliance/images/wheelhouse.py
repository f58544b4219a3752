"""The wheelhouse: the project wheel and every dependency, as files, for builds without a network.

Image builds install only from this folder (``pip install --no-index``), and offline bundles carry
it, so what a connected machine resolved once is exactly what an air-gapped one installs. Versions
are pinned to the builder's own environment (a constraints file from its installed distributions)
so images run the versions the test suite ran. Resolving tries the folder alone first and reaches
for the package index only for what is missing.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.images.catalog import IMAGES_DIR, PROJECT, is_project

PROJECT_DIR = IMAGES_DIR.parent


def constraints_text() -> str:
    """``name==version`` of every distribution installed here, the project itself excepted."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name != PROJECT:
            pins[name] = f"{name}=={dist.version}"
    return "\n".join(sorted(pins.values())) + "\n"


def run_pip(args: list[str], what: str, fix: str) -> subprocess.CompletedProcess[str]:
    """Run pip in this interpreter; on failure raise with pip's last lines, ``what`` and ``fix``."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise ApplianceError(f"{what} failed (pip exited {proc.returncode}):\n{tail}", fix=fix)
    return proc


def _pip(args: list[str], what: str) -> None:
    fix = "check that the package index is reachable, or pass a wheelhouse from an offline bundle"
    run_pip(args, what, fix)


PROJECT_WHEEL_GLOB = PROJECT.replace("-", "_") + "-*.whl"


def find_project_wheel(house: Path) -> Path | None:
    """The wheelhouse's one project wheel (``build_project_wheel`` replaces older ones), or None."""
    wheels = sorted(house.glob(PROJECT_WHEEL_GLOB))
    return wheels[-1] if wheels else None


def project_wheel(house: Path) -> Path:
    """The wheelhouse's project wheel; an error naming the fix when it holds none."""
    wheel = find_project_wheel(house)
    if wheel is None:
        raise ApplianceError(f"{house} holds no {PROJECT} wheel", fix="run `appliance images build` online")
    return wheel


def build_project_wheel(dest: Path) -> Path:
    """Build this project's wheel into ``dest``, replacing an older build of it. One build at a
    time per checkout (an flock beside setuptools' ``build/`` folder): setuptools stages a wheel in
    the checkout's ``build/`` and removes it after, so two builds at once (a bundle and an image
    build, or two test workers) could delete each other's files."""
    dest.mkdir(parents=True, exist_ok=True)
    staging = PROJECT_DIR / "build"
    staging.mkdir(exist_ok=True)
    with open(staging / ".project-wheel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for old in dest.glob(PROJECT_WHEEL_GLOB):
            old.unlink()
        # setuptools copies the sources into build/lib and never removes one deleted since: a
        # module deleted from the checkout would still ship in every wheel built after
        shutil.rmtree(staging / "lib", ignore_errors=True)
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(PROJECT_DIR)],
            "project wheel",
        )
        wheel = find_project_wheel(dest)
    if wheel is None:
        raise ApplianceError(
            f"no project wheel appeared in {dest}", fix="run `pip wheel .` by hand to see why"
        )
    return wheel


def _local_requirements(requirements: Iterable[str], wheel: Path) -> list[str]:
    """Requirements with the project name replaced by its wheel file (extras kept)."""
    out = []
    for req in requirements:
        if is_project(req):
            out.append(str(wheel) + req[len(PROJECT) :])
        else:
            out.append(req)
    return out


def metadata_headers(wheel: Path) -> list[str]:
    """The header lines of a wheel's METADATA (the description, after the first blank line, left
    out); empty when it has none."""
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".dist-info/METADATA") and name.count("/") == 1:
                text = archive.read(name).decode("utf-8", "replace")
                return text.split("\n\n", 1)[0].splitlines()
    return []


def requires_python(wheel: Path) -> str | None:
    """The wheel's ``Requires-Python`` (from its METADATA), or None when it states none."""
    for line in metadata_headers(wheel):
        if line.startswith("Requires-Python:"):
            return line.split(":", 1)[1].strip()
    return None


def add_wheels_for_python(dest: Path, python_version: str, offline: bool = False) -> list[str]:
    """Beside each wheel that Python ``python_version`` (the image's interpreter) may not install,
    put the newest release that it may; returns their names. The wheelhouse is pinned to the
    builder's interpreter, which can be newer than the image's (a pin needing Python >= 3.11.5
    on a 3.11.2 base): the image's pip, installing with ``--no-index``, skips the wheel it cannot
    use and takes the one added here."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import parse_wheel_filename

    wanted: set[str] = set()
    for wheel in sorted(dest.glob("*.whl")):
        spec = requires_python(wheel)
        try:
            if spec and not SpecifierSet(spec).contains(python_version, prereleases=True):
                wanted.add(str(parse_wheel_filename(wheel.name)[0]))
        except InvalidSpecifier:
            continue
    for name in sorted(wanted):
        if offline:
            raise ApplianceError(
                f"the wheelhouse's {name} needs a newer Python than the image's {python_version}",
                fix="make the bundle on a machine with the image's Python version, or build online",
            )
        target = ["--only-binary=:all:", "--python-version", python_version]
        _pip(
            ["download", "-q", "--no-deps", *target, "-d", str(dest), name],
            f"a {name} for Python {python_version}",
        )
    return sorted(wanted)


def ensure_wheelhouse(dest: Path, requirements: Iterable[str], offline: bool = False) -> Path:
    """Make ``dest`` hold wheels for ``requirements`` and all their dependencies; returns ``dest``.

    ``offline``: never contact an index (the wheelhouse came from a bundle and must be complete).
    """
    requirements = list(requirements)
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return dest
    if any(map(is_project, requirements)):
        existing = find_project_wheel(dest)
        wheel = existing if offline and existing else build_project_wheel(dest)
        requirements = _local_requirements(requirements, wheel)
    constraints = dest.parent / "constraints.txt"
    constraints.write_text(constraints_text())
    base = ["wheel", "-q", "-w", str(dest), "--find-links", str(dest), "-c", str(constraints)]
    try:
        _pip([*base, "--no-index", *requirements], "resolving from the wheelhouse alone")
    except ApplianceError:
        if offline:
            raise
        _pip([*base, "--prefer-binary", *requirements], "downloading wheels")
    return dest


def ensure_no_deps_wheels(dest: Path, packages: Iterable[str], offline: bool = False) -> list[Path]:
    """Put the wheels of ``packages`` alone (no dependencies) into ``dest``; returns their files.

    For what an image installs with ``--no-deps`` (see ``ImageSpec.no_deps``): resolving it with
    its dependencies would pin them against the rest of the wheelhouse. The folder is tried first.
    """
    packages = list(packages)
    if not packages:
        return []
    base = ["download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    try:
        _pip([*base, "--no-index", "--find-links", str(dest), *packages], "wheels without dependencies")
    except ApplianceError:
        if offline:
            raise
        _pip([*base, *packages], "downloading wheels without dependencies")
    from packaging.utils import canonicalize_name, parse_wheel_filename

    names = {canonicalize_name(p.split("==")[0]) for p in packages}
    return sorted(w for w in dest.glob("*.whl") if parse_wheel_filename(w.name)[0] in names)

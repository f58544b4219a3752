"""The wheelhouse: the project wheel and every dependency, as files, for builds without a network.

Image builds install only from this folder (``pip install --no-index``), and offline bundles carry
it, so what a connected machine resolved once is exactly what an air-gapped one installs. Versions
are pinned to the builder's own environment (a constraints file from its installed distributions)
so images run the versions the test suite ran. Resolving tries the folder alone first and reaches
for the package index only for what is missing.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from appliance.errors import ApplianceError
from appliance.images.catalog import IMAGES_DIR, PROJECT

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


def build_project_wheel(dest: Path) -> Path:
    """Build this project's wheel into ``dest``, replacing an older build of it."""
    dest.mkdir(parents=True, exist_ok=True)
    prefix = PROJECT.replace("-", "_") + "-"
    for old in dest.glob(prefix + "*.whl"):
        old.unlink()
    _pip(
        ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(PROJECT_DIR)],
        "project wheel",
    )
    wheels = sorted(dest.glob(prefix + "*.whl"))
    if not wheels:
        raise ApplianceError(
            f"no project wheel appeared in {dest}", fix="run `pip wheel .` by hand to see why"
        )
    return wheels[-1]


def _local_requirements(requirements: Iterable[str], project_wheel: Path) -> list[str]:
    """Requirements with the project name replaced by its wheel file (extras kept)."""
    out = []
    for req in requirements:
        if req == PROJECT or req.startswith(PROJECT + "["):
            out.append(str(project_wheel) + req[len(PROJECT) :])
        else:
            out.append(req)
    return out


def ensure_wheelhouse(dest: Path, requirements: Iterable[str], offline: bool = False) -> Path:
    """Make ``dest`` hold wheels for ``requirements`` and all their dependencies; returns ``dest``.

    ``offline``: never contact an index (the wheelhouse came from a bundle and must be complete).
    """
    requirements = list(requirements)
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return dest
    if any(r.split("[")[0] == PROJECT for r in requirements):
        prefix = PROJECT.replace("-", "_") + "-"
        existing = sorted(dest.glob(prefix + "*.whl"))
        wheel = existing[-1] if offline and existing else build_project_wheel(dest)
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

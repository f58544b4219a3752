"""Which appliance code an image holds, told by a digest of the code itself.

An image is built from the project wheel of its day. A checkout that has moved on, or a host
whose appliance was upgraded without its images, would otherwise run containers holding older code
than the engine that renders their configuration: a service the stack now has whose module the
image lacks, a config key the old code does not read. The digest covers the files the wheel ships
of the ``appliance`` package, by path and bytes, so it is the same for the wheel, for an
installation of it and for the checkout it was built from, whatever the zip's timestamps or the
wheel's file name. Images carry it as a label (``build.CODE_LABEL``) and preflight compares.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import appliance

PACKAGE = "appliance"
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".tcss", ".proto")
"""What the wheel ships of the package: its modules and ``[tool.setuptools.package-data]``."""


def is_code(relpath: str) -> bool:
    """True for a path (``appliance/...``, slashes) the digest covers."""
    return (
        relpath.startswith(PACKAGE + "/")
        and relpath.endswith(CODE_SUFFIXES)
        and "/__pycache__/" not in relpath
    )


def _digest(files: Iterable[tuple[str, bytes]]) -> str:
    """Order-independent over the files: each one's path and content digest, sorted by path."""
    entries = sorted((path, hashlib.sha256(data).digest()) for path, data in files)
    total = hashlib.sha256()
    for path, content in entries:
        total.update(path.encode() + b"\0" + content)
    return total.hexdigest()[:16]


def tree_code_digest(package_dir: Path) -> str:
    """The digest of a package folder on disk (a checkout's or an installation's)."""

    def files() -> Iterator[tuple[str, bytes]]:
        for path in package_dir.rglob("*"):
            rel = f"{PACKAGE}/{path.relative_to(package_dir).as_posix()}"
            if is_code(rel) and path.is_file():
                yield rel, path.read_bytes()

    return _digest(files())


def wheel_code_digest(wheel: Path) -> str:
    """The digest of the code inside a project wheel."""
    with zipfile.ZipFile(wheel) as archive:
        return _digest((name, archive.read(name)) for name in archive.namelist() if is_code(name))


@lru_cache(maxsize=1)
def running_code_digest() -> str:
    """The digest of the appliance running this process (read once: the code does not change
    under a running process, and preflight asks once per image)."""
    return tree_code_digest(Path(appliance.__file__).resolve().parent)

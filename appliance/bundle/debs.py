"""The Debian packages a cluster's hosts install, for hosts with no network: every ``.deb`` the
roles need and their dependency closure, with a ``Packages`` index, under the bundle's ``debs/``.

Which packages: the roles say it, in one place each: a role default named ``appliance_*_package``
(one name, or a list) or ``appliance_*_package_of`` (a map whose values are names) in
``roles/*/defaults/main.yml``. The closure of each is what ``apt-cache depends --recurse`` lists
(no recommends, suggests, conflicts, breaks, replaces or enhances; every alternative of a
dependency is kept), downloaded with ``apt-get download`` on the Debian 12 machine that makes the
bundle. ``Packages`` is written here from each deb's control fields (``dpkg-deb -f``), with its
file name, size and sha256, so the hosts need no dpkg-dev; ``closure.json`` maps each role
package to the debs it needs, so a host is sent only the debs of the packages its roles install.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from appliance.bundle.manifest import BundleError
from appliance.stack import ROLES_DIR

DEBS_DIR = "debs"
INDEX = "Packages"
CLOSURE = "closure.json"
SUITE = "bookworm"
PACKAGE_VAR = re.compile(r"^appliance_\w+_package(s|_of)?$")
DEPENDS_OPTIONS = (
    "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
    "--no-replaces", "--no-enhances",
)  # fmt: skip


def role_packages(roles_dir: Path = ROLES_DIR) -> list[str]:
    """Every Debian package a role installs, from the roles' ``*_package`` defaults."""
    found: set[str] = set()
    for defaults in sorted(roles_dir.glob("*/defaults/main.yml")):
        for key, value in (yaml.safe_load(defaults.read_text()) or {}).items():
            if not PACKAGE_VAR.match(str(key)):
                continue
            names = (
                value.values() if isinstance(value, dict) else [value] if isinstance(value, str) else value
            )
            found.update(str(name) for name in names)
    return sorted(found)


def parse_depends(output: str) -> list[str]:
    """The real package names in ``apt-cache depends --recurse`` output: the lines that start at
    the first column, less virtual packages (``<name>``, whose providers are listed by name) and
    other architectures' (``name:arch``)."""
    names = {
        line.strip()
        for line in output.splitlines()
        if line and not line[0].isspace() and not line.startswith("<") and ":" not in line
    }
    return sorted(names)


def control_fields(text: str) -> dict[str, str]:
    """A control paragraph (``dpkg-deb -f`` output) as field -> value (continuation lines kept)."""
    fields: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and last is not None:
            fields[last] += "\n" + line
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def stanza(control: str, filename: str, size: int, sha256: str) -> str:
    """One ``Packages`` paragraph: the deb's control fields, then where it is and its hashes."""
    lines = [line for line in control.rstrip("\n").splitlines() if line.strip()]
    lines += [f"Filename: ./{filename}", f"Size: {size}", f"SHA256: {sha256}"]
    return "\n".join(lines) + "\n"


def write_index(folder: Path) -> dict[str, dict[str, str]]:
    """Write ``folder/Packages`` for every deb in ``folder``; file name -> package, version."""
    paragraphs, found = [], {}
    for deb in sorted(folder.glob("*.deb")):
        control = _run("dpkg-deb", "-f", str(deb))
        fields = control_fields(control)
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        paragraphs.append(stanza(control, deb.name, deb.stat().st_size, digest))
        found[deb.name] = {"package": fields["Package"], "version": fields["Version"]}
    (folder / INDEX).write_text("\n".join(paragraphs))
    return found


def closure_files(closure: dict[str, list[str]], debs: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """Role package -> the deb files of its closure (names apt found no deb for, e.g. a package
    no longer in the archive, are left out: ``apt-get download`` has already failed on those)."""
    file_of = {info["package"]: name for name, info in debs.items()}
    return {top: sorted(file_of[n] for n in names if n in file_of) for top, names in closure.items()}


def check_machine(os_release: Path = Path("/etc/os-release")) -> None:
    """The debs are made for Debian 12: refuse another system (its packages would not install)."""
    fields = dict(
        line.split("=", 1) for line in (os_release.read_text() if os_release.exists() else "").splitlines()
        if "=" in line
    )  # fmt: skip
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    if codename != SUITE:
        raise BundleError(
            f"the cluster hosts run Debian 12 ({SUITE}) but this machine is {codename or 'not Debian'}: "
            "its apt would fetch the wrong packages",
            fix="make the bundle with --debs on a Debian 12 machine (or a debian:12 container with this "
            "checkout), or leave --debs out and install the packages on the hosts yourself",
        )


def download(folder: Path, packages: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Download ``packages`` (default: the roles') and their closure into ``folder``, write the
    index and ``closure.json``; return role package -> deb files."""
    check_machine()
    tops = sorted(packages) if packages is not None else role_packages()
    closure: dict[str, list[str]] = {}
    for top in tops:
        proc = subprocess.run(
            ["apt-cache", "depends", *DEPENDS_OPTIONS, top], capture_output=True, text=True, check=False
        )
        names = parse_depends(proc.stdout)
        if proc.returncode != 0 or top not in names:
            raise BundleError(
                f"apt knows no package {top!r}: {proc.stderr.strip()[-300:]}",
                fix="run `apt-get update` on this machine (its lists are missing or stale), then again",
            )
        closure[top] = names
    folder.mkdir(parents=True, exist_ok=True)
    wanted = sorted({n for names in closure.values() for n in names})
    proc = subprocess.run(
        ["apt-get", "download", "-q", *wanted], cwd=folder, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BundleError(
            f"apt-get download of {len(wanted)} packages failed: {proc.stderr.strip()[-600:]}",
            fix="check this machine reaches its Debian mirror and run `apt-get update`, then again",
        )
    files = closure_files(closure, write_index(folder))
    (folder / CLOSURE).write_text(json.dumps(files, indent=2, sort_keys=True) + "\n")
    return files


def read_index(text: str) -> dict[str, dict[str, str]]:
    """A ``Packages`` file as deb file name -> package, version, and its paragraph."""
    found: dict[str, dict[str, str]] = {}
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        fields = control_fields(paragraph)
        name = fields["Filename"].removeprefix("./")
        found[name] = {
            "package": fields["Package"],
            "version": fields["Version"],
            "stanza": paragraph.strip("\n") + "\n",
        }
    return found


def host_vars(folder: Path) -> dict[str, Any]:
    """What the roles get for an unpacked, verified ``debs/`` folder on the controller."""
    return {
        "appliance_common_debs_source": str(folder),
        "appliance_common_debs_closure": json.loads((folder / CLOSURE).read_text()),
        "appliance_common_debs_index": read_index((folder / INDEX).read_text()),
    }


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BundleError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout

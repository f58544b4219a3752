"""Releases side by side: ``STATE/releases/VERSION/`` holds one version of the appliance.

A stack's commands name ``{python}`` and ``{bin}``, which render to the interpreter that ran
``up``. For an upgrade to be undone, the previous version's code must still be there after the
new one is installed, so each version lives in its own folder:

- ``src/``: the package (``appliance/``, ``tui/``) and its ``stacks/``, copied from a source tree
  or unpacked from a bundle (a ``git archive`` tarball of the repository);
- ``venv/``: a virtualenv without packages of its own. Its one ``.pth`` file puts ``src/`` first
  on ``sys.path`` and then adds the base virtualenv's site-packages (MLflow, ONNX Runtime...), so
  installing a release takes a second and no network; its ``bin/`` has the base's console
  scripts (``mlflow``, ``jupyter``) re-pointed at the release's interpreter, and links to its
  native programs (``weed``);
- ``release.json``: its version and where its packages come from.

``STATE/releases/current`` (a symbolic link) names the release the stack runs from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError


class ReleaseInputError(ApplianceError):
    """A release version, folder or bundle that cannot be used."""

    exit_code = 2


RELEASES = "releases"
CURRENT = "current"
RELEASE_FILE = "release.json"
PREVIOUS_RELEASE = {"version": "0.1.0", "commit": "2cfb45c30657d0cba3b0f9a5ba0ad738d4e2d334"}
"""The release before this one: its version and the repository commit it was cut from."""
COPIED = ("appliance", "tui", "stacks", "pyproject.toml")
VERSION_RE = re.compile(r'^__version__ = "([^"]+)"', re.M)


@dataclass(frozen=True)
class Release:
    """One installed version."""

    version: str
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.python.parent

    def cli(self, *args: str) -> list[str]:
        """The argv of this release's ``appliance`` command."""
        return [str(self.python), "-P", "-c", "from appliance.cli import main; main()", *args]


def releases_dir(state_dir: Path) -> Path:
    return state_dir / RELEASES


def source_version(src: Path) -> str:
    """The version a source tree declares in ``appliance/__init__.py``."""
    init = src / "appliance" / "__init__.py"
    found = VERSION_RE.search(init.read_text()) if init.is_file() else None
    if not found:
        raise ReleaseInputError(
            f"{src} holds no appliance package with a __version__",
            fix="give a tarball of the repository (`git archive -o FILE.tar.gz COMMIT`)",
        )
    return found.group(1)


def base_env() -> tuple[Path, Path]:
    """The virtualenv that holds the packages: (site-packages, bin). Inside a release, its base."""
    marker = Path(sys.prefix).parent / RELEASE_FILE
    if marker.is_file():
        data = json.loads(marker.read_text())
        return Path(data["base_site"]), Path(data["base_bin"])
    return Path(sysconfig.get_paths()["purelib"]), Path(sys.executable).parent


def _check_version(version: str) -> str:
    if not re.fullmatch(r"[0-9][0-9A-Za-z.+-]{0,40}", version) or ".." in version:
        raise ReleaseInputError(f"{version!r} is not a release version", fix="use a version such as 0.2.0")
    return version


def installed(state_dir: Path) -> dict[str, Release]:
    folder = releases_dir(state_dir)
    found: dict[str, Release] = {}
    for root in sorted(folder.iterdir()) if folder.is_dir() else []:
        if root.name != CURRENT and (root / RELEASE_FILE).is_file() and not root.is_symlink():
            found[root.name] = Release(root.name, root)
    return found


def get(state_dir: Path, version: str) -> Release:
    release = installed(state_dir).get(_check_version(version))
    if release is None:
        have = ", ".join(installed(state_dir)) or "none"
        raise ReleaseInputError(
            f"release {version} is not installed in {releases_dir(state_dir)} (installed: {have})",
            fix="give its bundle: `appliance upgrade --bundle FILE.tar.gz`",
        )
    return release


def active(state_dir: Path) -> Release | None:
    """The release the stack runs from, if the stack was brought up from one."""
    link = releases_dir(state_dir) / CURRENT
    if not link.is_symlink():
        return None
    root = (link.parent / os.readlink(link)).resolve()
    return Release(root.name, root) if (root / RELEASE_FILE).is_file() else None


def activate(state_dir: Path, release: Release) -> None:
    """Point ``current`` at ``release`` (atomically: a rename over the old link)."""
    link = releases_dir(state_dir) / CURRENT
    tmp = link.with_name(f".{CURRENT}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(release.root.name)
    os.replace(tmp, link)


def install_source(state_dir: Path, src: Path) -> Release:
    """Install the source tree ``src`` as a release (again, if that version is there already)."""
    version = _check_version(source_version(src))
    folder = releases_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = folder / version
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=folder))
    try:
        for name in COPIED:
            path = src / name
            if path.is_dir():
                shutil.copytree(path, staging / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif path.is_file():
                (staging / "src").mkdir(exist_ok=True)
                shutil.copy2(path, staging / "src" / name)
        _make_venv(staging)
        (staging / RELEASE_FILE).write_text(json.dumps(_record(version, src)))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fix_paths(root, staging)
    return Release(version, root)


def _record(version: str, src: Path) -> dict[str, str]:
    site, bin_dir = base_env()
    return {"version": version, "source": str(src), "base_site": str(site), "base_bin": str(bin_dir)}


def _make_venv(root: Path) -> None:
    venv = root / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    base_site, base_bin = base_env()
    # src first (this release's appliance), then the base's packages with their own .pth files
    # (the base's editable finder for `appliance` comes after the path finder, so src wins).
    (site / "appliance-release.pth").write_text(
        f"{root / 'src'}\nimport site; site.addsitedir({str(base_site)!r})\n"
    )
    for script in sorted(base_bin.iterdir()):
        target = venv / "bin" / script.name
        if target.exists() or not script.is_file() or script.name.startswith(("activate", "python", "pip")):
            continue
        with script.open("rb") as fh:
            native = fh.read(4) == b"\x7fELF"
        if native and os.access(script, os.X_OK):
            # A native program from a wheel (SeaweedFS's `weed`): the stack finds it beside the
            # interpreter, so it is linked in; it needs no re-pointing.
            target.symlink_to(script)
            continue
        try:
            head, _, rest = script.read_text().partition("\n")
        except (UnicodeDecodeError, OSError):
            continue
        if head.startswith("#!") and "python" in head:
            target.write_text(f"#!{venv / 'bin' / 'python'}\n{rest}")
            target.chmod(0o755)


def _fix_paths(root: Path, staging: Path) -> None:
    """The venv was built in the staging folder; point its .pth and scripts at the final one."""
    venv = root / "venv"
    for path in [*venv.rglob("appliance-release.pth"), *(venv / "bin").iterdir()]:
        if path.is_file() and not path.is_symlink():
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            if str(staging) in text:
                path.write_text(text.replace(str(staging), str(root)))
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file():
        cfg.write_text(cfg.read_text().replace(str(staging), str(root)))


def install_bundle(state_dir: Path, bundle: Path) -> Release:
    """Install a release from a tarball of the repository (``git archive``); the tarball is
    checked for members that would land outside the unpack folder before anything is written."""
    if not bundle.is_file():
        raise ReleaseInputError(f"no bundle at {bundle}", fix="give a .tar or .tar.gz of the repository")
    with tempfile.TemporaryDirectory(prefix="appliance-release-") as tmp:
        try:
            with tarfile.open(bundle) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise ReleaseInputError(
                f"{bundle} is not a readable release tarball: {err}",
                fix="make one with `git archive -o FILE.tar.gz COMMIT`",
            ) from err
        src = Path(tmp)
        inner = [p for p in src.iterdir() if p.is_dir()]
        if not (src / "appliance").is_dir() and len(inner) == 1:
            src = inner[0]
        return install_source(state_dir, src)


def install_running(state_dir: Path) -> Release:
    """Install the code of this process (its package folder's parent) as a release."""
    import appliance

    return install_source(state_dir, Path(appliance.__file__).resolve().parent.parent)


def probe(release: Release, timeout: float = 120) -> dict[str, object]:
    """What a release runs with: its version, package versions, MLflow's newest schema revision
    (from the release's own interpreter, so each side reports what it would really load)."""
    proc = subprocess.run(
        [str(release.python), "-P", "-c", _PROBE],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
    )
    if proc.returncode != 0:
        raise ApplianceError(
            f"release {release.version} at {release.root} does not start: {proc.stderr.strip()[-800:]}",
            fix="install it again (`appliance upgrade --bundle FILE`)",
        )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


_PROBE = """
import importlib.metadata as md, json, os
import appliance
packages = {}
for d in md.distributions():
    name = (d.metadata["Name"] or "").lower()
    if name and name != "mlops-appliance":
        packages[name] = d.version
head = None
try:
    import mlflow.store
    from alembic.script import ScriptDirectory
    migrations = os.path.join(os.path.dirname(mlflow.store.__file__), "db_migrations")
    head = ScriptDirectory(migrations).get_current_head()
except Exception:
    pass
print(json.dumps({"version": appliance.__version__, "file": appliance.__file__, "packages": packages,
                  "mlflow_schema_head": head}))
"""


def running_python(state_dir: Path) -> Path:
    """The interpreter a stack's ``{python}`` names: the active release's when it is this very
    version (so ``appliance up`` after an upgrade keeps the stack on its release), else this one."""
    from appliance import __version__

    release = active(state_dir)
    if release is not None and release.version == __version__ and release.python.exists():
        return release.python
    return this_python()


def this_python() -> Path:
    """This interpreter by the one name every way of starting it agrees on: a virtualenv's
    ``bin/python`` when that is the same file as ``sys.executable``. The ``appliance`` script runs
    ``bin/python3`` (its shebang), ``python -m appliance`` and the tests ``bin/python``: one
    interpreter under two names, and the name is in the commands a stack renders, hashed into each
    service's configuration, so which of them ran ``up`` must not make the next ``plan`` recreate
    every Python service. A copied interpreter (``venv --copies``) keeps its own name."""
    exe = Path(sys.executable)
    named = exe.parent / "python"
    try:
        same = named != exe and named.exists() and named.resolve() == exe.resolve()
    except OSError:  # a link loop or an unreadable folder: keep the name it was started by
        same = False
    return named if same else exe

"""``up --bundle`` with a bundle whose wheelhouse carries a newer appliance than the one installed:
pip upgrades the virtualenv from the bundle alone (no network: ``unshare -n``), ``up`` goes on in a
fresh process with the new code, and the edge stack (a model server on a local ONNX file, with its
monitoring) comes up and answers an inference request.

The virtualenv holds the older appliance as a regular (not editable) install from its wheel, the
way an air-gapped host has it. Everything else (pip and setuptools included) comes from the project's
own virtualenv through a ``.pth`` file: installing onnxruntime, MLflow and the rest into a fresh one
takes minutes, and the upgrade under test touches the appliance alone (pip's only-if-needed
strategy).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml
from packaging.version import Version

from appliance import __version__
from appliance.bundle.create import create_bundle
from appliance.images.catalog import PROJECT
from appliance.images.wheelhouse import PROJECT_DIR, build_project_wheel
from tests.conftest import VENV_BIN, write_answers
from tests.integration._serving_fixtures import N_FEATURES, infer_body, write_mlp

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
OLD = Version(__version__)
NEW = f"{OLD.major}.{OLD.minor}.{OLD.micro + 1}"
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "appliance", "tui", "stacks")


def newer_wheel(root: Path) -> Path:
    """The project's wheel from a copy of its source whose version is NEW; returns its folder."""
    src = root / "src"
    src.mkdir()
    for name in SOURCE:
        path = PROJECT_DIR / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.exists():
            shutil.copy2(path, src / name)
    for rel, pattern in (
        ("pyproject.toml", r'^version = "[^"]+"'),
        ("appliance/__init__.py", r'^__version__ = "[^"]+"'),
    ):
        text = (src / rel).read_text()
        bumped, count = re.subn(
            pattern, lambda m: m.group(0).rsplit('"', 2)[0] + f'"{NEW}"', text, flags=re.M
        )
        assert count == 1, f"no version line in {rel}"
        (src / rel).write_text(bumped)
    house = root / "new"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(house),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    assert [p.name for p in house.glob("*.whl")] == [f"{PROJECT.replace('-', '_')}-{NEW}-py3-none-any.whl"]
    return house


def older_venv(root: Path) -> Path:
    """A virtualenv with the appliance of this checkout (version OLD) installed from its wheel."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "zz-project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    old = build_project_wheel(root / "old")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q", "--no-deps", str(old)]
    subprocess.run(pip, check=True, capture_output=True)
    return venv


def installed_version(venv: Path) -> str:
    """The appliance version ``venv`` imports (run outside the checkout, whose metadata would win)."""
    code = f"import importlib.metadata as m; print(m.version({PROJECT!r}))"
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True, cwd=venv
    ).stdout.strip()


def test_up_from_a_bundle_with_a_newer_appliance_upgrades_then_serves(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("unshare (util-linux) and ip (iproute2) are needed: scripts/bootstrap.sh installs them")
    venv = older_venv(tmp_path)
    assert installed_version(venv) == str(OLD)
    bundle = tmp_path / "edge.tar"
    create_bundle(bundle, "edge", {}, wheelhouse=newer_wheel(tmp_path))
    models = tmp_path / "models"
    write_mlp(models / "mlp")
    answers = write_answers(
        tmp_path / "appliance.yaml",
        runtime="local",
        profile="edge",
        object_store={"kind": "filesystem"},
        components={"controller": False},
        serving={"model": str(models / "mlp"), "poll_seconds": 0},
    )
    state = tmp_path / "state"
    port = yaml.safe_load(answers.read_text())["ports"]["serving_http"]
    cli = shlex.join([str(venv / "bin" / "appliance"), "--answers", str(answers), "--state-dir", str(state)])
    body = tmp_path / "body.json"
    body.write_text(json.dumps(infer_body(np.ones((2, N_FEATURES), dtype=np.float32))))
    infer = shlex.join(
        [
            "curl",
            "-sS",
            "-o",
            str(tmp_path / "infer.json"),
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
        ]
    )
    steps = {
        "up": f"{cli} up --bundle {shlex.quote(str(bundle))}",
        "status": f"{cli} status --json",
        "infer": f'{infer} -H "Authorization: Bearer $(cat {state}/secrets/serving_token)" '
        f"--data @{body} http://127.0.0.1:{port}/v2/models/mlp/infer",
        "down": f"{cli} down",
    }
    script = ["ip link set lo up || exit 97", f"export PATH={venv / 'bin'}:{VENV_BIN}:$PATH"]
    for name, command in steps.items():
        script.append(
            f"{command} >{tmp_path / name}.out 2>{tmp_path / name}.err; echo $? >{tmp_path / name}.rc"
        )
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # outside the checkout, so nothing imports the appliance from its source
    )
    assert proc.returncode == 0, f"namespace setup failed ({proc.returncode}): {proc.stderr}"
    out = {name: (tmp_path / f"{name}.out").read_text() for name in steps}
    err = {name: (tmp_path / f"{name}.err").read_text() for name in steps}
    rc = {name: int((tmp_path / f"{name}.rc").read_text()) for name in steps}

    assert rc["up"] == 0, out["up"] + err["up"]
    assert f"Successfully installed {PROJECT}-{NEW}" in err["up"], err["up"]
    assert installed_version(venv) == NEW
    health = {name: s["health"] for name, s in json.loads(out["status"])["services"].items()}
    assert health == dict.fromkeys(("serving", "prometheus", "node-exporter", "alertmanager"), "healthy"), (
        health
    )
    assert out["infer"] == "200", err["infer"] + (tmp_path / "infer.json").read_text()
    doc = json.loads((tmp_path / "infer.json").read_text())
    assert doc["model_name"] == "mlp" and doc["outputs"][0]["shape"] == [2, 3]
    assert rc["down"] == 0, out["down"] + err["down"]

"""The wheel carries every stack file, each at its place under share/mlops-appliance/stacks (where
an appliance installed from a wheel, not a checkout, reads them)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from appliance.stack import _stacks_dir

REPO = Path(__file__).resolve().parents[2]
SHARE = "share/mlops-appliance/"


def test_data_files_ship_every_stack_file_at_its_own_path() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    entries: dict[str, list[str]] = pyproject["tool"]["setuptools"]["data-files"]
    shipped = set()
    for dest, patterns in entries.items():
        for pattern in patterns:
            assert SHARE + pattern.rsplit("/", 1)[0] == dest, f"{pattern} would land in {dest}"
            shipped |= {p.relative_to(REPO).as_posix() for p in REPO.glob(pattern)}
    files = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "stacks").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert files - shipped == set(), "stack files the wheel would leave out (add them to data-files)"


def test_a_checkout_reads_its_own_stacks_folder() -> None:
    assert _stacks_dir() == REPO / "stacks"

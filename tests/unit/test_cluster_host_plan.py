"""The appliance's own plan per host (``appliance.cluster.host_plan``) and the record of what the
last ``up`` applied (``appliance.cluster.applied``), from rendered answers alone (no host)."""

from __future__ import annotations

import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.answers import Answers
from appliance.cluster.applied import (
    DOWN,
    applied_hosts,
    applied_inventory,
    applied_path,
    record_down,
    record_up,
)
from appliance.cluster.host_plan import plan_hosts
from appliance.cluster.inventory import units_by_name
from appliance.cluster.run import inventory_path, write_inventory
from appliance.cluster.units import render_hosts
from appliance.plan import Action

HOSTS = [
    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
    {"name": "srv1", "address": "10.0.0.2", "groups": ["serving"]},
    {"name": "srv2", "address": "10.0.0.3", "groups": ["serving"]},
]
MODELS = [{"name": "alpha", "uri": "/srv/models/alpha"}, {"name": "beta", "uri": "/srv/models/beta"}]


def answers(hosts: list[dict[str, Any]] = HOSTS, **extra: Any) -> Answers:
    return Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "components": {"workbench": False, "controller": False, "dashboards": False},
            "models": MODELS,
            "cluster": {"hosts": hosts, "venv": "/opt/appliance/venv"},
        }
        | extra
    )


def applied_up(chosen: Answers, tmp_path: Path, limit: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """An ``up`` of ``chosen`` as the engine records it: the inventory written, then recorded."""
    folder = tmp_path / "cluster"
    host_vars = render_hosts(chosen, tmp_path / "secrets")
    record_up(folder, write_inventory(chosen, host_vars, folder), limit, kept=[])
    return host_vars


def verbs(plan: Any) -> list[tuple[str, str]]:
    return [(a.verb, a.service) for a in plan.actions]


def test_the_first_plan_creates_every_service_on_its_host_and_an_unchanged_one_plans_nothing(
    tmp_path: Path,
) -> None:
    host_vars = render_hosts(answers(), tmp_path / "secrets")
    first = plan_hosts({}, host_vars)
    assert set(first) == {"ctl1", "srv1", "srv2"}
    assert ("create", "mlflow") in verbs(first["ctl1"]) and ("create", "serving") in verbs(first["srv2"])
    assert ("create", "serving") not in verbs(first["ctl1"])  # no default of one host leaks to another
    assert all(a.reason == "first up of this host" for p in first.values() for a in p.actions)
    applied_up(answers(), tmp_path)  # the inventory round trip (!unsafe text included) changes nothing
    again = plan_hosts(applied_hosts(tmp_path / "cluster"), render_hosts(answers(), tmp_path / "secrets"))
    assert all(not plan for plan in again.values()), {h: p.render() for h, p in again.items()}


def test_a_changed_model_recreates_the_model_servers_alone_naming_what_changed(tmp_path: Path) -> None:
    applied_up(answers(), tmp_path)
    moved = [MODELS[0], {"name": "beta", "uri": "/srv/models/beta-v2"}]
    plans = plan_hosts(
        applied_hosts(tmp_path / "cluster"), render_hosts(answers(models=moved), tmp_path / "secrets")
    )
    for host in ("srv1", "srv2"):
        (action,) = plans[host].actions
        assert (action.verb, action.service) == ("recreate", "serving")
        assert action.reason.endswith("changed") and "beta-v2" not in action.reason  # names keys, not values
    assert not plans["ctl1"] or all(a.service != "serving" for a in plans["ctl1"].actions)


def test_a_host_leaving_the_answers_has_its_units_stopped_and_one_joining_has_them_created(
    tmp_path: Path,
) -> None:
    applied_up(answers(), tmp_path)
    applied = applied_hosts(tmp_path / "cluster")
    without = render_hosts(answers(HOSTS[:2]), tmp_path / "secrets")
    plans = plan_hosts(applied, without)
    units = list(units_by_name(applied["srv2"]))
    assert "serving" in units and verbs(plans["srv2"]) == [("stop", name) for name in reversed(units)]
    assert "drained" in plans["srv2"].actions[0].reason
    assert not plans["srv1"]
    # Under --limit no host leaves (an up with a limit stops none), and only the limit is planned.
    assert set(plan_hosts(applied, without, ["srv1"])) == {"srv1"}
    joined = [*HOSTS, {"name": "srv3", "address": "10.0.0.4", "groups": ["serving"]}]
    plans = plan_hosts(applied, render_hosts(answers(joined), tmp_path / "secrets"))
    assert ("create", "serving") in verbs(plans["srv3"])
    assert {(a.verb, a.reason) for a in plans["srv3"].actions} == {("create", "first up of this host")}
    assert not plans["srv1"] and not plans["srv2"]


def test_plan_and_preflight_leave_the_record_so_a_removed_host_is_still_stopped_by_up(tmp_path: Path) -> None:
    """The bug this record fixes: plan wrote the inventory up read its removed hosts from."""
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    assert stat.S_IMODE(applied_path(folder).stat().st_mode) == 0o600  # it holds secrets
    smaller = answers(HOSTS[:2])
    write_inventory(smaller, render_hosts(smaller, tmp_path / "secrets"), folder)  # plan or preflight
    assert set(applied_hosts(folder)) == {"ctl1", "srv1", "srv2"}
    assert applied_inventory(folder) == applied_path(folder)
    text = applied_path(folder).read_text()
    assert "!unsafe" in text  # read back and written again, Prometheus's rules stay untemplated


def test_an_up_with_a_limit_records_only_its_hosts(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    moved = answers(models=[MODELS[0], {"name": "beta", "uri": "/srv/models/beta-v2"}])
    applied_up(moved, tmp_path, limit=["srv1"])
    plans = plan_hosts(applied_hosts(folder), render_hosts(moved, tmp_path / "secrets"))
    assert not plans["srv1"] and verbs(plans["srv2"]) == [("recreate", "serving")]


def test_a_host_that_failed_to_leave_stays_recorded_with_its_groups(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    smaller = answers(HOSTS[:2])
    written = write_inventory(smaller, render_hosts(smaller, tmp_path / "secrets"), folder)
    record_up(folder, written, None, kept=["srv2"])
    data = yaml.safe_load(applied_path(folder).read_text().replace("!unsafe", ""))["all"]
    assert "srv2" in data["hosts"] and "srv2" in data["children"]["serving"]["hosts"]
    record_up(folder, written, None, kept=[])
    assert set(applied_hosts(folder)) == {"ctl1", "srv1"}


def test_a_host_stopped_by_down_plans_its_services_starting_again(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    host_vars = applied_up(answers(), tmp_path)
    record_down(folder, ["srv2"])
    applied = applied_hosts(folder)
    assert applied["srv2"][DOWN] is True and DOWN not in applied["srv1"]
    plans = plan_hosts(applied, host_vars)
    assert {a.verb for a in plans["srv2"].actions} == {"start"} and not plans["srv1"]
    applied_up(answers(), tmp_path)  # up brings it back: the mark goes
    assert DOWN not in applied_hosts(folder)["srv2"]


def test_a_state_folder_from_before_the_record_falls_back_on_the_last_inventory(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    chosen = answers()
    write_inventory(chosen, render_hosts(chosen, tmp_path / "secrets"), folder)
    # preflight or plan before any up: nothing is applied, whatever inventory they wrote
    assert applied_hosts(folder) == {}
    assert plan_hosts(applied_hosts(folder), render_hosts(chosen, tmp_path / "secrets"))["srv1"]
    (folder / "runner" / "up").mkdir(parents=True)  # an up of the release before the record
    assert applied_inventory(folder) == inventory_path(folder)
    assert set(applied_hosts(folder)) == {"ctl1", "srv1", "srv2"}
    assert applied_hosts(tmp_path / "nothing") == {}


def test_plan_prints_each_hosts_services_under_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import cluster_cmds, main
    from appliance.cluster import engine
    from appliance.cluster.run import HostResult

    results = {
        "srv1": HostResult(
            ok=30, changed=2, services=[asdict(Action("recreate", "serving", "env MODELS changed"))]
        ),
        "srv2": HostResult(services=[asdict(Action("stop", "serving", "the host left the answers"))]),
        "ctl1": HostResult(ok=40),
    }
    monkeypatch.setattr(engine, "run", lambda *args, **kwargs: results)
    monkeypatch.setattr(cluster_cmds, "app_context", lambda: None)
    main(["cluster", "plan"])
    out = capsys.readouterr().out
    tail = out[out.index("cluster plan:") :]
    assert "ctl1:\n  no service to start, restart or stop" in tail
    assert "srv1:\n  ~ recreate serving  (env MODELS changed)" in tail
    assert "srv2:\n  | stop     serving  (the host left the answers)" in tail

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
    LAST_TASK,
    PENDING,
    applied_hosts,
    applied_inventory,
    applied_path,
    forget,
    groups_of,
    joining,
    load_applied,
    migrate,
    record_down,
    record_finished,
    record_started,
)
from appliance.cluster.engine import service_plans
from appliance.cluster.host_plan import plan_hosts
from appliance.cluster.inventory import units_by_name
from appliance.cluster.run import HostResult, inventory_path, write_inventory
from appliance.cluster.units import render_hosts
from appliance.context import AppContext
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


def applied_up(
    chosen: Answers, tmp_path: Path, limit: list[str] | None = None, failed: tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """An ``up`` of ``chosen`` as the engine records it: the inventory written, the hosts it runs
    on marked pending, then each host's result (``failed`` ones failed)."""
    folder = tmp_path / "cluster"
    host_vars = render_hosts(chosen, tmp_path / "secrets")
    written = write_inventory(chosen, host_vars, folder)
    assert chosen.cluster is not None
    hosts = limit or [h.name for h in chosen.cluster.hosts]
    record_started(folder, written, hosts)
    results = {h: HostResult(ok=5, failed=int(h in failed)) for h in hosts}
    record_finished(folder, written, results, reached_end=[h for h in hosts if h not in failed])
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


def test_tuned_alerting_restarts_prometheus_and_alertmanager_on_the_cluster(tmp_path: Path) -> None:
    """One host reloads them (``reloads``); a cluster restarts them until its roles confirm a
    reload took (``units.unit``), so a refused file fails the ``up`` there too."""
    applied_up(answers(), tmp_path)
    tuned = answers(monitoring={"drift_psi_threshold": 0.35, "alert_group_wait": "7s"})
    plans = plan_hosts(applied_hosts(tmp_path / "cluster"), render_hosts(tuned, tmp_path / "secrets"))
    assert sorted(verbs(plans["ctl1"])) == [("recreate", "alertmanager"), ("recreate", "prometheus")]
    assert not plans["srv1"] and not plans["srv2"]


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


def test_under_a_limit_a_removed_host_stays_recorded_and_a_new_one_outside_is_not_recorded(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    srv3 = {"name": "srv3", "address": "10.0.0.4", "groups": ["serving"]}
    changed = answers([HOSTS[0], HOSTS[1], srv3])  # srv2 out, srv3 in
    applied_up(changed, tmp_path, limit=["srv1"])
    known = applied_hosts(folder)
    assert set(known) == {"ctl1", "srv1", "srv2"}  # srv2 still runs: a later full up stops it
    assert groups_of(load_applied(folder), "srv2") == {"serving"}
    written = inventory_path(folder)
    assert joining(folder, written, ["srv3", "srv1"]) == ["srv3"]  # never brought up


def test_a_host_whose_up_did_not_finish_stays_pending_and_joins_again(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    srv3 = {"name": "srv3", "address": "10.0.0.4", "groups": ["serving"]}
    applied_up(answers(), tmp_path)
    grown = answers([*HOSTS, srv3])
    host_vars = applied_up(grown, tmp_path, limit=["srv3", "ctl1"], failed=("srv3",))
    known = applied_hosts(folder)
    assert known["srv3"].get(PENDING) is True and not known["ctl1"].get(PENDING)
    # a retried `up --limit srv3` widens again; plan shows its units starting
    assert joining(folder, inventory_path(folder), ["srv3"]) == ["srv3"]
    plans = plan_hosts(known, host_vars)
    assert {(a.verb, a.reason) for a in plans["srv3"].actions} == {
        ("start", "the last up did not finish on this host")
    }
    applied_up(grown, tmp_path, limit=["srv3"])
    assert PENDING not in applied_hosts(folder)["srv3"]
    assert joining(folder, inventory_path(folder), ["srv3"]) == []


def test_a_host_that_reported_ok_but_never_reached_the_last_play_stays_pending(tmp_path: Path) -> None:
    """A failed host in a serial play ends the whole run: the others report ok without having
    run the later plays (the gateway's, monitoring's)."""
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    srv3 = {"name": "srv3", "address": "10.0.0.4", "groups": ["serving"]}
    grown = answers([*HOSTS, srv3])
    written = write_inventory(grown, render_hosts(grown, tmp_path / "secrets"), folder)
    record_started(folder, written, ["ctl1", "srv1", "srv2", "srv3"])
    results = {"ctl1": HostResult(ok=9), "srv1": HostResult(ok=9, failed=1), "srv2": HostResult(ok=3)}
    results["srv3"] = HostResult(ok=3, changed=2)
    record_finished(folder, written, results, reached_end=[])
    known = applied_hosts(folder)
    assert all(known[h].get(PENDING) for h in ("ctl1", "srv1", "srv2", "srv3")), known.keys()
    assert joining(folder, written, ["srv3"]) == ["srv3"]


def test_the_last_task_is_the_first_of_the_last_play_and_runs_only_from_a_full_inventory() -> None:
    roles = Path(__file__).resolve().parents[2] / "roles"
    plays = yaml.safe_load((roles / "site.yml").read_text())
    (include,) = plays[-1]["tasks"]
    assert include["ansible.builtin.include_role"] == {"name": "appliance_common", "tasks_from": "retire"}
    assert include["when"] == "appliance_common_host_unit_names is defined"  # Vagrant's bare inventory
    retire = yaml.safe_load((roles / "appliance_common" / "tasks" / "retire.yml").read_text())
    assert retire[0]["name"] == LAST_TASK


def test_a_host_in_other_groups_than_recorded_is_joining(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    regrouped = answers([HOSTS[0], HOSTS[1], {**HOSTS[2], "groups": ["serving", "train_workers"]}])
    written = write_inventory(regrouped, render_hosts(regrouped, tmp_path / "secrets"), folder)
    assert joining(folder, written, ["srv1", "srv2"]) == ["srv2"]


def test_a_host_that_left_is_forgotten_with_its_groups(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    applied_up(answers(), tmp_path)
    assert "serving" in groups_of(load_applied(folder), "srv2")
    forget(folder, ["srv2"])
    assert set(applied_hosts(folder)) == {"ctl1", "srv1"} and groups_of(load_applied(folder), "srv2") == set()
    assert "!unsafe" in applied_path(folder).read_text()  # read back and written again, still marked


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


def test_a_state_folder_from_before_the_record_takes_its_last_inventory_once(tmp_path: Path) -> None:
    folder = tmp_path / "cluster"
    chosen = answers()
    write_inventory(chosen, render_hosts(chosen, tmp_path / "secrets"), folder)
    # preflight or plan before any up: nothing is applied, whatever inventory they wrote
    migrate(folder)
    assert applied_hosts(folder) == {} and applied_inventory(folder) is None
    assert plan_hosts(applied_hosts(folder), render_hosts(chosen, tmp_path / "secrets"))["srv1"]
    (folder / "runner" / "up").mkdir(parents=True)  # an up of the release before the record
    assert applied_inventory(folder) == inventory_path(folder)  # read-only commands read it there
    migrate(folder)
    assert applied_inventory(folder) == applied_path(folder)
    assert set(applied_hosts(folder)) == {"ctl1", "srv1", "srv2"}
    assert stat.S_IMODE(applied_path(folder).stat().st_mode) == 0o600
    smaller = answers(HOSTS[:2])
    write_inventory(smaller, render_hosts(smaller, tmp_path / "secrets"), folder)
    migrate(folder)  # once: a later inventory does not replace the record
    assert set(applied_hosts(folder)) == {"ctl1", "srv1", "srv2"}


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


def test_service_plans_reads_the_last_ups_record_and_writes_nothing(tmp_path: Path) -> None:
    """What the wizard's review shows (``engine.service_plans``): before any up every service is
    created, nothing written (no state folder, no secret); after one, a host taken out of the
    answers is stopped and the others are left alone."""
    fresh = tmp_path / "fresh"
    plans = service_plans(AppContext.create(answers(), None, fresh))
    assert ("create", "serving") in verbs(plans["srv2"]) and ("create", "mlflow") in verbs(plans["ctl1"])
    assert all(a.verb == "create" for plan in plans.values() for a in plan.actions)
    assert not fresh.exists()
    state = tmp_path / "state"
    applied_up(answers(), state)
    plans = service_plans(AppContext.create(answers(HOSTS[:2]), None, state))
    assert verbs(plans["srv2"]) and {verb for verb, _ in verbs(plans["srv2"])} == {"stop"}
    assert not plans["srv1"], plans["srv1"].render()

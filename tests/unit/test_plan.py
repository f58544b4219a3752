"""The planner, state in and state out: fake observations, no process started."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.errors import ApplianceError
from appliance.plan import Plan, plan, plan_down, unread_files, waves
from appliance.runtimes.base import ObservedService, ProcState
from appliance.stack import HealthCheck, ReloadSpec, RenderedService


def svc(name: str, depends_on: list[str] | None = None, command: str = "run") -> RenderedService:
    return RenderedService(
        name=name,
        description=name,
        command=[command],
        container_command=[command],
        image=None,
        env={},
        ports={},
        publish_address="127.0.0.1",
        volumes={},
        files={},
        health=HealthCheck(tcp="127.0.0.1:1"),
        depends_on=depends_on or [],
        restart="always",
        oneshot=False,
        gpu=False,
        url=None,
        metrics=None,
    )


STACK = {
    s.name: s for s in [svc("store"), svc("mlflow", ["store"]), svc("workbench", ["mlflow"]), svc("prom")]
}


def running(s: RenderedService, state: ProcState = "running") -> ObservedService:
    return ObservedService(s.name, s.config_hash, state)


def verbs(p: Plan) -> list[tuple[str, str]]:
    return [(a.verb, a.service) for a in p.actions]


def test_fresh_host_creates_everything_in_dependency_order() -> None:
    assert verbs(plan(STACK, {})) == [
        ("create", "prom"),
        ("create", "store"),
        ("create", "mlflow"),
        ("create", "workbench"),
    ]


def test_unchanged_stack_plans_zero_actions() -> None:
    the_plan = plan(STACK, {n: running(s) for n, s in STACK.items()})
    assert not the_plan and the_plan.to_dict() == {"actions": []}
    assert "nothing to do" in the_plan.render()


def test_changed_config_recreates_only_that_service() -> None:
    observed = {n: running(s) for n, s in STACK.items()}
    changed = dict(STACK, mlflow=svc("mlflow", ["store"], command="run --new-flag"))
    assert verbs(plan(changed, observed)) == [("recreate", "mlflow")]


def test_stopped_and_crashed_services_are_started() -> None:
    observed = {n: running(s) for n, s in STACK.items()}
    observed["prom"] = running(STACK["prom"], "stopped")
    observed["workbench"] = running(STACK["workbench"], "failed")
    assert verbs(plan(STACK, observed)) == [("start", "prom"), ("start", "workbench")]


def test_interrupted_create_is_created_again_and_strays_are_removed() -> None:
    observed = {n: running(s) for n, s in STACK.items()}
    observed["mlflow"] = ObservedService("mlflow", None, "stopped")
    observed["old"] = ObservedService("old", "abc", "running")
    the_plan = plan(STACK, observed)
    assert verbs(the_plan) == [("remove", "old"), ("create", "mlflow")]
    assert "interrupted" in the_plan.actions[1].reason


def test_finished_oneshot_counts_as_up_to_date() -> None:
    job = svc("buckets")
    assert not plan({"buckets": job}, {"buckets": ObservedService("buckets", job.config_hash, "done")})


def test_down_stops_dependents_first_and_skips_stopped() -> None:
    observed = {n: running(s) for n, s in STACK.items()}
    observed["prom"] = running(STACK["prom"], "stopped")
    assert verbs(plan_down(STACK, observed)) == [("stop", "workbench"), ("stop", "mlflow"), ("stop", "store")]


def test_cycles_are_refused() -> None:
    with pytest.raises(ApplianceError, match="cycle"):
        waves({"a": svc("a", ["b"]), "b": svc("b", ["a"])})


RELOAD = ReloadSpec(
    files=["rules.yml"], confirm="http://127.0.0.1:1/metrics", metric="prometheus_config_last_reload"
)


def reloading(rules: str = "groups: []", scrape: str = "scrape_configs: []") -> RenderedService:
    """A service that reads rules.yml again on a signal, and scrape.yml only at its start."""
    return svc("prometheus").model_copy(
        update={"files": {"rules.yml": rules, "scrape.yml": scrape}, "reload": RELOAD}
    )


def read(s: RenderedService, state: ProcState = "running") -> ObservedService:
    """Running as ``s`` was started: its reload files read as rendered for ``s``."""
    return replace(running(s, state), loaded_files=s.reload_digests)


def test_a_change_of_reload_files_alone_reloads_the_service() -> None:
    before, after = reloading(), reloading(rules="groups: [{name: drift, rules: []}]")
    assert after.config_hash == before.config_hash and after.reload_digests != before.reload_digests
    the_plan = plan({"prometheus": after}, {"prometheus": read(before)})
    assert verbs(the_plan) == [("reload", "prometheus")]
    assert "rules.yml changed, which it reads again without a restart" in the_plan.actions[0].reason
    assert not unread_files(after, read(after)) and not plan(
        {"prometheus": after}, {"prometheus": read(after)}
    )


def test_a_change_of_any_other_file_recreates_it_even_beside_a_reload_file() -> None:
    before = reloading()
    for after in (
        reloading(scrape="scrape_configs: [{job_name: x}]"),
        reloading("groups: [x]", "scrape: [y]"),
    ):
        assert after.config_hash != before.config_hash
        assert verbs(plan({"prometheus": after}, {"prometheus": read(before)})) == [
            ("recreate", "prometheus")
        ]


def test_a_stopped_service_is_started_not_reloaded_and_one_never_recorded_is_reloaded() -> None:
    before, after = reloading(), reloading(rules="groups: [x]")
    assert verbs(plan({"prometheus": after}, {"prometheus": read(before, "stopped")})) == [
        ("start", "prometheus")
    ]
    unknown = running(after)  # started by a release before the record: what it read is not known
    the_plan = plan({"prometheus": after}, {"prometheus": unknown})
    assert (
        verbs(the_plan) == [("reload", "prometheus")] and "not recorded as read" in the_plan.actions[0].reason
    )


def test_services_without_reload_files_keep_their_hash_and_never_reload() -> None:
    plain = svc("store")
    assert plain.reload_digests == {}
    assert plain.config_hash == "ffc428ef75b32719"  # as before reload files existed: no service recreated
    assert not plan({"store": plain}, {"store": replace(running(plain), loaded_files=None)})

"""``cluster up``'s progress per host and service: task results become each service's state
(running, started, restarted, reloaded, healthy, failed) and the count of ready services on its
host; the task names matched are the ones ``unit_start.yml`` gives, and the CLI prints the service
lines."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from appliance.cli import cluster_cmds, main
from appliance.cluster import engine
from appliance.cluster.progress import ACTIONS, HEALTH, ServiceEvent, ServiceProgress, host_units
from appliance.cluster.run import HostResult
from appliance.stack import ROLES_DIR

HOST_VARS: dict[str, dict[str, Any]] = {
    "ctl": {
        "appliance_mlflow_units": [
            {"name": "mlflow", "health": {"url": "http://10.0.0.1:5000/health"}},
            {"name": "mlflow-users", "health": {}},
        ],
        "appliance_common_requirements": ["mlflow"],
    },
    "srv": {
        "appliance_serving_units": [
            {"name": "serving", "health": {"url": "http://10.0.0.2:8080/v2/health/ready"}}
        ]
    },
}


def test_the_units_of_each_host_and_whether_each_has_a_probe() -> None:
    assert host_units(HOST_VARS) == {"ctl": {"mlflow": True, "mlflow-users": False}, "srv": {"serving": True}}


def events_of(results: list[tuple[str, str, str]]) -> list[ServiceEvent]:
    """The service events a fresh progress makes of task results ``(host, status, task)``."""
    progress = ServiceProgress(host_units(HOST_VARS))
    return [e for e in (progress.record(*r) for r in results) if e is not None]


def test_a_cold_up_takes_each_service_from_started_to_ready_and_counts_them_per_host() -> None:
    results = [
        ("ctl", "changed", "Write each systemd unit"),  # not a service's start or probe
        ("ctl", "changed", "Start mlflow"),
        ("srv", "skipped", "Start serving"),  # a skipped task changes nothing
        ("ctl", "ok", "Wait for the health check of mlflow"),
        ("ctl", "changed", "Start mlflow-users"),  # no probe: ready once started
        ("srv", "changed", "Start serving"),
        ("srv", "failed", "Wait for the health check of serving"),
        ("ctl", "ok", "Start nginx-of-another-host"),  # not a unit of this host
    ]
    assert events_of(results) == [
        ServiceEvent("ctl", "mlflow", "started", 0, 2),
        ServiceEvent("ctl", "mlflow", "healthy", 1, 2),
        ServiceEvent("ctl", "mlflow-users", "started", 2, 2),
        ServiceEvent("srv", "serving", "started", 0, 1),
        ServiceEvent("srv", "serving", "failed", 0, 1),
    ]


def test_a_second_up_reports_each_service_running_then_healthy_once() -> None:
    progress = ServiceProgress(host_units(HOST_VARS))
    first = progress.record("ctl", "ok", "Start mlflow")
    assert first == ServiceEvent("ctl", "mlflow", "running", 0, 2)
    assert progress.record("ctl", "ok", "Wait for the health check of mlflow") == ServiceEvent(
        "ctl", "mlflow", "healthy", 1, 2
    )
    assert progress.record("ctl", "ok", "Wait for the health check of mlflow") is None  # no change
    assert progress.record("ctl", "ok", "Start mlflow") is None  # started by a second play: still healthy
    assert progress.record("elsewhere", "ok", "Start mlflow") is None  # a host with no units given


def test_a_restarted_or_reloaded_service_says_so_and_is_ready_once_healthy() -> None:
    """A changed unit is restarted and a gateway whose members alone changed reloaded: each says
    which (a reload read as a restart would tell the person watching that nginx dropped its
    connections), and counts as ready once its probe answers, or at once without a probe."""
    results = [
        ("ctl", "skipped", "Restart mlflow"),  # the two tasks that do not run for a unit skip
        ("ctl", "changed", "Reload mlflow"),
        ("ctl", "skipped", "Start mlflow"),
        ("ctl", "ok", "Wait for the health check of mlflow"),
        ("ctl", "changed", "Restart mlflow-users"),
        ("srv", "ok", "Reload serving"),  # the module found nothing to do: running as it was
        ("srv", "failed", "Restart serving"),
    ]
    assert events_of(results) == [
        ServiceEvent("ctl", "mlflow", "reloaded", 0, 2),
        ServiceEvent("ctl", "mlflow", "healthy", 1, 2),
        ServiceEvent("ctl", "mlflow-users", "restarted", 2, 2),
        ServiceEvent("srv", "serving", "running", 0, 1),
        ServiceEvent("srv", "serving", "failed", 0, 1),
    ]


def test_the_task_names_matched_are_the_ones_the_start_task_file_gives() -> None:
    tasks = yaml.safe_load((ROLES_DIR / "appliance_common" / "tasks" / "unit_start.yml").read_text())
    names = [t["name"] for t in tasks] + [b["name"] for t in tasks for b in t.get("block", [])]
    unit = "{{ appliance_common_unit.name }}"
    assert all(prefix + unit in names for prefix in ACTIONS), names
    assert HEALTH + unit in names, names
    modules = {t["name"]: t.get("ansible.builtin.systemd_service", {}).get("state") for t in tasks}
    # each task's systemd state is the word its change is reported by
    assert {prefix: modules[prefix + unit] for prefix in ACTIONS} == ACTIONS, modules


def test_up_prints_each_services_change_of_state_beside_the_task_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(ctx: object, action: str, on_progress: Any, limit: Any, on_service: Any) -> dict[str, HostResult]:
        sink = engine.with_services(on_progress, on_service, HOST_VARS)
        assert sink is not None
        for result in [
            ("ctl", "changed", "Start mlflow"),
            ("ctl", "ok", "Wait for the health check of mlflow"),
        ]:
            sink(*result)
        return {"ctl": HostResult(ok=2, changed=1)}

    monkeypatch.setattr(engine, "run", run)
    monkeypatch.setattr(cluster_cmds, "app_context", lambda: None)
    main(["cluster", "up"])
    err = capsys.readouterr().err.splitlines()
    assert [line.split() for line in err] == [
        ["ctl", "changed", "Start", "mlflow"],
        ["ctl", "started", "service", "mlflow", "(0", "of", "2", "ready)"],
        ["ctl", "ok", "Wait", "for", "the", "health", "check", "of", "mlflow"],
        ["ctl", "healthy", "service", "mlflow", "(1", "of", "2", "ready)"],
    ]

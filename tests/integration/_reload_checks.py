"""The check that a tuned alerting answer reloads Prometheus and Alertmanager in place, shared by
the lab on the local runtime (test_lab_stack) and as containers (test_container_lab): the same
CLI, the same answers, supervisord's signal or the container runtime's."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.answers_file import load_answers
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.errors import ApplianceError

Cli = Callable[..., subprocess.CompletedProcess[str]]
READ_AT_START = {"controller"}
"""Services that read a model's drift threshold at their start and so are recreated by its change:
the controller (its models.json, where ``appliance status`` and the retraining read it)."""


def assert_tuned_alerting_reloads_in_place(answers: Path, state: Path, cli: Cli) -> None:
    """A drift threshold and Alertmanager's group wait tuned in the answers file: ``up`` reloads
    both (SIGHUP, confirmed by their reload gauges) and the same processes go on running the new
    rule and route. A rule file Prometheus refuses fails the reload with its log, the file it had
    is put back, and it still runs that: nothing is left for its next start to trip on. The
    answers are as they were when it returns (and the services reloaded back)."""

    def status() -> dict[str, Any]:
        services: dict[str, Any] = json.loads(cli("status", "--json").stdout)["services"]
        return services

    def login(service: str) -> tuple[str, str]:
        return ("appliance", (state / "secrets" / f"{service}_web_password").read_text().strip())

    before, original = status(), answers.read_text()
    tuned = yaml.safe_load(original)
    tuned["monitoring"] = tuned.get("monitoring", {}) | {
        "drift_psi_threshold": 0.35,
        "alert_group_wait": "7s",
    }

    def drift_rules() -> list[str]:
        url = f"{before['prometheus']['url']}/api/v1/rules"
        groups = httpx.get(url, auth=login("prometheus")).json()["data"]["groups"]
        return [r["query"] for g in groups for r in g["rules"] if r["name"] == "FeatureDrift"]

    answers.write_text(yaml.safe_dump(tuned))
    try:
        plan = {a["service"]: a["verb"] for a in json.loads(cli("plan", "--json").stdout)["actions"]}
        reloaded = {"prometheus": "reload", "alertmanager": "reload"}
        assert {n: plan.get(n) for n in reloaded} == reloaded, plan
        assert set(plan) - set(reloaded) <= READ_AT_START, plan
        progress = " ".join(cli("up").stderr.split())  # the lines as wrapped to the terminal
        assert "prometheus reload reload (alert_rules.yml changed" in progress, progress
        assert "alertmanager reload reload (alertmanager.yml changed" in progress, progress
        after = status()
        for name in ("prometheus", "alertmanager"):
            assert after[name]["pid"] == before[name]["pid"], f"{name} was restarted, not reloaded"
            assert after[name]["uptime_seconds"] >= before[name]["uptime_seconds"]
        assert drift_rules() and all("0.35" in query for query in drift_rules()), drift_rules()
        url = f"{before['alertmanager']['url']}/api/v2/status"
        config = httpx.get(url, auth=login("alertmanager")).json()["config"]["original"]
        assert "group_wait: 7s" in config, config
        left = json.loads(cli("plan", "--json").stdout)
        assert left == {"actions": []}, left

        engine = Engine(AppContext.create(load_answers(answers), answers, state))
        good = engine.desired["prometheus"]
        bad_rule = "groups: [{name: broken, rules: [{alert: Broken, expr: 'up ==='}]}]\n"
        broken = good.model_copy(update={"files": good.files | {"alert_rules.yml": bad_rule}})
        refused = r"did not take its new prometheus\.yml, alert_rules\.yml"
        with pytest.raises(ApplianceError, match=refused) as err:
            engine.runtime.reload(broken)
        assert "prometheus_config_last_reload_successful 0" in str(err.value), err.value
        on_disk = (state / "config" / "prometheus" / "alert_rules.yml").read_text()
        assert on_disk == good.files["alert_rules.yml"], on_disk
        assert all("0.35" in query for query in drift_rules()), drift_rules()
        assert status()["prometheus"]["pid"] == before["prometheus"]["pid"], "prometheus restarted"
        left = json.loads(cli("plan", "--json").stdout)
        assert left == {"actions": []}, left
    finally:
        answers.write_text(original)
        cli("up")
    assert drift_rules() and not any("0.35" in query for query in drift_rules()), drift_rules()

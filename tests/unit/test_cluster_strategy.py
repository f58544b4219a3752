"""Which Ansible strategy the cluster commands run with (``appliance.cluster.run.strategy_env``):
Mitogen's where it is installed, the caller's own when they chose one, Ansible's linear one
otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from appliance.cluster import run
from appliance.cluster.run import MITOGEN_STRATEGY, ansible_env, strategy_env


def test_mitogen_from_the_cluster_extra_is_the_strategy_and_its_plugin_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    env = strategy_env()
    assert env["ANSIBLE_STRATEGY"] == MITOGEN_STRATEGY
    assert (Path(env["ANSIBLE_STRATEGY_PLUGINS"]) / f"{MITOGEN_STRATEGY}.py").is_file(), env


def test_every_run_gets_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    assert ansible_env(tmp_path)["ANSIBLE_STRATEGY"] == MITOGEN_STRATEGY


def test_a_strategy_the_caller_chose_is_left_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANSIBLE_STRATEGY", "linear")
    assert strategy_env() == {}
    assert "ANSIBLE_STRATEGY" not in ansible_env(tmp_path)  # ansible-runner passes the caller's own on


def test_without_mitogen_the_runs_use_ansibles_own_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "ansible_mitogen" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(run.importlib.util, "find_spec", find_spec)
    assert strategy_env() == {}


def test_training_jobs_run_without_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A job is one long command per host: nothing for Mitogen to save (appliance.cluster.train)."""
    from appliance.cluster.train import launcher_env

    monkeypatch.delenv("ANSIBLE_STRATEGY", raising=False)
    assert "ANSIBLE_STRATEGY" not in ansible_env(tmp_path, mitogen=False)
    assert "ANSIBLE_STRATEGY" not in launcher_env(tmp_path)

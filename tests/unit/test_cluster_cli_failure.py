"""``appliance cluster up --json`` when a host fails or cannot be reached: the per-host results
still reach stdout as JSON, the message naming the host goes to stderr, and the exit code says
which (4: a host could not be reached, 1: a host failed; preflight: 4 or 3). Without Ansible a
cluster command says how to install it."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from appliance.cli import cluster_cmds, main
from appliance.cluster import engine
from appliance.cluster.run import ANSIBLE_FIX, ClusterRunError, HostResult
from appliance.errors import PreflightError


def _failing(results: dict[str, HostResult]) -> Any:
    def run(*args: object, **kwargs: object) -> dict[str, HostResult]:
        raise ClusterRunError("up", results)

    return run


def _failed_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], action: str, run: Any, code: int
) -> tuple[dict[str, Any], str]:
    """``cluster ACTION --json`` with the engine's ``run`` replaced: it exits ``code``; the JSON on
    stdout and what stderr said."""
    monkeypatch.setattr(engine, "run", run)
    monkeypatch.setattr(cluster_cmds, "app_context", lambda: None)
    with pytest.raises(SystemExit) as ended:
        main(["cluster", action, "--json"])
    assert ended.value.code == code
    out, err = capsys.readouterr()
    return json.loads(out), err


@pytest.mark.parametrize(
    ("lost", "code", "state"),
    [
        (
            HostResult(ok=3, unreachable=1, messages=["Create the state folders: Failed to connect"]),
            4,
            "unreachable",
        ),
        (HostResult(ok=3, failed=1, messages=["Start the units: unit failed"]), 1, "failed"),
    ],
)
def test_a_failed_up_still_prints_every_hosts_results_as_json(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    lost: HostResult,
    code: int,
    state: str,
) -> None:
    results = {"ctl": HostResult(ok=20, changed=5), "srv1": lost}
    data, err = _failed_json(monkeypatch, capsys, "up", _failing(results), code)
    assert data["srv1"]["state"] == state and data["srv1"]["messages"] == lost.messages
    assert data["ctl"]["state"] == "changed" and data["ctl"]["failed"] == 0
    assert f"srv1: {state}" in err and "run the same command again" in err


def test_without_json_a_failed_up_prints_no_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(engine, "run", _failing({"srv1": HostResult(unreachable=1)}))
    monkeypatch.setattr(cluster_cmds, "app_context", lambda: None)
    with pytest.raises(SystemExit) as ended:
        main(["cluster", "up"])
    assert ended.value.code == 4
    out, err = capsys.readouterr()
    assert out == "" and "srv1: unreachable" in err


def test_without_ansible_a_cluster_command_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ansible_runner", None)  # as if the cluster extra were absent
    monkeypatch.setattr(cluster_cmds, "app_context", lambda: None)
    with pytest.raises(SystemExit) as ended:
        main(["cluster", "status"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ansible-runner" in err and ANSIBLE_FIX in err, err


@pytest.mark.parametrize(
    ("action", "lost", "kind", "code"),
    [
        ("preflight", HostResult(ok=2, unreachable=1, messages=["Failed to connect"]), PreflightError, 4),
        ("preflight", HostResult(ok=2, failed=1, messages=["python3 is missing"]), PreflightError, 3),
        ("up", HostResult(ok=2, unreachable=1), ClusterRunError, 4),
        ("up", HostResult(ok=2, failed=1), ClusterRunError, 1),
    ],
)
def test_a_host_that_cannot_be_reached_or_fails_gives_the_exit_code_the_help_names(
    action: str, lost: HostResult, kind: type[Exception], code: int
) -> None:
    with pytest.raises(kind) as raised:
        engine.raise_for_failed_hosts(action, {"ctl": HostResult(ok=9), "srv1": lost}, gone={})
    assert getattr(raised.value, "exit_code", None) == code
    assert "srv1" in str(raised.value) and "ctl" not in str(raised.value)


def test_a_removed_host_that_cannot_be_reached_is_already_gone_and_not_a_failure() -> None:
    gone = {"srv2": HostResult(unreachable=1)}
    engine.raise_for_failed_hosts("up", {"ctl": HostResult(ok=9), **gone}, gone)
    # beside a host that failed: exit 1 for that one, the gone host neither counted nor named
    with pytest.raises(ClusterRunError) as raised:
        engine.raise_for_failed_hosts("up", {"ctl": HostResult(ok=9, failed=1), **gone}, gone)
    assert raised.value.exit_code == 1 and "srv2" not in str(raised.value)


def test_preflight_names_only_the_hosts_that_failed_or_could_not_be_reached() -> None:
    results = {
        "ctl": HostResult(ok=5, changed=1),
        "srv1": HostResult(ok=2, failed=1, messages=["no systemd"]),
    }
    with pytest.raises(PreflightError) as raised:
        engine.raise_for_failed_hosts("preflight", results, gone={})
    assert [name for name, _, _ in raised.value.failures] == ["srv1"]


@pytest.mark.parametrize(
    ("lost", "code"),
    [(HostResult(ok=2, unreachable=1, messages=["Failed to connect"]), 4), (HostResult(ok=2, failed=1), 3)],
)
def test_a_failed_preflight_still_prints_every_hosts_results_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lost: HostResult, code: int
) -> None:
    results = {"ctl": HostResult(ok=5), "srv1": lost}

    def run(*args: object, **kwargs: object) -> dict[str, HostResult]:
        engine.raise_for_failed_hosts("preflight", results, gone={})  # the decision the engine makes
        return results

    data, err = _failed_json(monkeypatch, capsys, "preflight", run, code)
    assert set(data) == {"ctl", "srv1"} and data["srv1"]["state"] == lost.state
    assert data["ctl"]["state"] == "ok" and "srv1" in err and "preflight failed" in err

"""Reloading a running service's files: the spec's rule, the record of what it read, and the
confirmation read from a real HTTP metrics page on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.errors import ApplianceError
from appliance.runtimes import reloads
from appliance.stack import HealthCheck, ReloadSpec, RenderedService, ServiceSpec
from tests.unit._fake_http import fake_http

METRIC = "prometheus_config_last_reload"


class Page:
    """What the fake server's /metrics says, changed by the test while a confirm waits."""

    def __init__(self) -> None:
        self.text = ""
        self.auth: list[str | None] = []


@pytest.fixture
def page() -> Iterator[tuple[Page, int]]:
    state = Page()

    def metrics(request: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        state.auth.append(request.headers.get("Authorization"))
        return 200, state.text.encode()

    with fake_http(metrics) as port:
        yield state, port


def service(port: int, tmp_path: Path, rules: str = "groups: []") -> RenderedService:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    return RenderedService(
        name="prometheus",
        description="prometheus",
        command=["prometheus"],
        container_command=["prometheus"],
        image=None,
        env={},
        ports={},
        publish_address="127.0.0.1",
        volumes={},
        files={"alert_rules.yml": rules, "web.yml": "basic_auth_users: {}"},
        health=HealthCheck(
            http=f"http://127.0.0.1:{port}/-/ready", auth_user="appliance", auth_password_file=str(secret)
        ),
        depends_on=[],
        restart="always",
        oneshot=False,
        gpu=False,
        url=None,
        metrics=None,
        reload=ReloadSpec(
            files=["alert_rules.yml"], confirm=f"http://127.0.0.1:{port}/metrics", metric=METRIC
        ),
    )


def gauges(successful: int, stamp: float) -> str:
    return (
        f"# HELP {METRIC}_successful Whether the last configuration reload attempt was successful.\n"
        f"# TYPE {METRIC}_successful gauge\n{METRIC}_successful {successful}\n"
        f"{METRIC}_success_timestamp_seconds {stamp:.9e}\n"  # as Go writes 1.733555553e+09
        f'{METRIC}_successful_total{{x="y"}} 9\n'
    )


def test_reload_files_must_be_config_files_of_a_long_running_service() -> None:
    base = {
        "description": "d",
        "component": "monitoring",
        "profiles": ["lab"],
        "command": ["x"],
        "health": {"tcp": "127.0.0.1:1"},
        "config_files": {"rules.yml": "alert_rules_yml"},
    }
    reload = {"files": ["rules.yml"], "confirm": "http://x/metrics", "metric": METRIC}
    assert ServiceSpec.model_validate(base | {"reload": reload}).reload is not None
    with pytest.raises(
        ValidationError, match=r"reload.files must name some of this service's config_files \(rules.yml\)"
    ):
        ServiceSpec.model_validate(base | {"reload": reload | {"files": ["other.yml"]}})
    with pytest.raises(ValidationError, match="nothing to reload"):
        ServiceSpec.model_validate(base | {"reload": reload, "oneshot": True})


def test_the_record_holds_what_was_read_and_a_damaged_one_counts_as_not_read(tmp_path: Path) -> None:
    svc = service(1, tmp_path)
    assert reloads.loaded(tmp_path, "prometheus") is None
    reloads.remember(tmp_path, svc)
    assert (
        reloads.loaded(tmp_path, "prometheus")
        == svc.reload_digests
        == {"alert_rules.yml": svc.reload_digests["alert_rules.yml"]}
    )
    reloads.record_path(tmp_path, "prometheus").write_text("[not, a, record")
    assert reloads.loaded(tmp_path, "prometheus") is None


def test_a_reload_is_confirmed_once_the_gauges_show_it_after_the_signal(page, tmp_path: Path) -> None:
    state, port = page
    svc = service(port, tmp_path)
    sent = time.time()
    state.text = gauges(1, int(sent) - 60)  # the last good reload is older than the signal: wait
    before = reloads.reading(svc)
    assert before == reloads.Reading(1.0, float(int(sent) - 60))

    def took() -> None:
        time.sleep(0.5)
        state.text = gauges(1, int(sent))  # Prometheus stamps whole seconds: the signal's own counts

    threading.Thread(target=took).start()
    started = time.monotonic()
    reloads.confirm(svc, before, sent, lambda: "")
    assert 0.4 < time.monotonic() - started < 5
    assert state.auth[-1] == "Basic YXBwbGlhbmNlOnMzY3JldA=="  # the health check's user and password


def test_a_refused_file_fails_the_reload_at_once_with_the_services_log(page, tmp_path: Path) -> None:
    state, port = page
    svc = service(port, tmp_path)
    state.text = gauges(1, time.time() - 60)
    before = reloads.reading(svc)
    state.text = gauges(0, time.time() - 60)
    started = time.monotonic()
    with pytest.raises(ApplianceError) as err:
        reloads.confirm(svc, before, time.time(), lambda: '    err="parsing YAML file alert_rules.yml"')
    assert time.monotonic() - started < 5  # not the whole CONFIRM_SECONDS
    text = str(err.value)
    assert "did not take its new alert_rules.yml" in text and f"{METRIC}_successful 0.0" in text
    assert "parsing YAML file alert_rules.yml" in text and "appliance logs prometheus" in (
        err.value.fix or ""
    )


def test_no_new_reload_within_the_bound_fails_and_so_does_a_silent_page(
    page, tmp_path: Path, monkeypatch
) -> None:
    state, port = page
    monkeypatch.setattr(reloads, "CONFIRM_SECONDS", 1.0)
    svc = service(port, tmp_path)
    state.text = gauges(0, time.time() - 60)  # failed before, and nothing new since the signal
    with pytest.raises(ApplianceError, match="did not take"):
        reloads.confirm(svc, reloads.reading(svc), time.time(), lambda: "")
    silent = service(1, tmp_path)  # nothing listens there
    with pytest.raises(ApplianceError, match="no answer from its metrics page") as err:
        reloads.confirm(silent, None, time.time(), lambda: "")
    assert err.value.fix == "`appliance restart prometheus` starts it again with the new files"


def test_a_refused_reload_puts_the_files_it_had_back_and_a_taken_one_is_recorded(
    page, tmp_path: Path
) -> None:
    state, port = page
    old, new = service(port, tmp_path, "groups: [old]"), service(port, tmp_path, "groups: [new]")
    rules = tmp_path / "config" / "prometheus" / "alert_rules.yml"
    rules.parent.mkdir(parents=True)
    rules.write_text(old.files["alert_rules.yml"])
    reloads.remember(tmp_path, old)
    signals: list[str] = []

    def write() -> None:
        rules.write_text(new.files["alert_rules.yml"])

    def refuse() -> None:
        signals.append("HUP")
        state.text = gauges(0, time.time() - 60)

    state.text = gauges(1, time.time() - 60)
    with pytest.raises(ApplianceError, match="did not take"):
        reloads.reload_in_place(new, tmp_path, write, refuse, lambda: "")
    assert signals == ["HUP"] and rules.read_text() == "groups: [old]"  # what runs is what is on disk
    assert oct(rules.stat().st_mode & 0o777) == "0o600"
    assert reloads.loaded(tmp_path, "prometheus") == old.reload_digests

    def take() -> None:
        state.text = gauges(1, time.time())

    reloads.reload_in_place(new, tmp_path, write, take, lambda: "")
    assert (
        rules.read_text() == "groups: [new]" and reloads.loaded(tmp_path, "prometheus") == new.reload_digests
    )


def test_a_success_in_the_signals_own_second_is_not_taken_for_the_reload(
    page, tmp_path: Path, monkeypatch
) -> None:
    """The last success stamped this very second (a start just before): the signal goes in a later
    second, so that success cannot confirm a reload the server never did."""
    state, port = page
    monkeypatch.setattr(reloads, "CONFIRM_SECONDS", 1.5)
    svc = service(port, tmp_path)
    stamp = int(time.time())
    state.text = gauges(1, stamp)  # and the server ignores the signal
    sent: list[float] = []
    with pytest.raises(ApplianceError, match="did not take"):
        reloads.reload_in_place(svc, tmp_path, lambda: None, lambda: sent.append(time.time()), lambda: "")
    assert int(sent[0]) > stamp
    assert reloads.loaded(tmp_path, "prometheus") is None

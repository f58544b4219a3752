"""Invalid input is shown where it was typed and blocks the step; the dashboard reads and acts.

Each blocking test checks three things: the Next button is disabled, the reason is on screen,
and Ctrl+N does not leave the step; then a valid value unblocks it.
"""

from __future__ import annotations

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, DataTable, Input

from appliance.preflight import Check
from tests.unit._tui_fixtures import FakeBackend, make_app
from tui.app import ApplianceApp

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def text_of(app: ApplianceApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def assert_blocked(pilot: Pilot, app: ApplianceApp, step: str, reason: str) -> None:
    assert app.screen.query_one("#next", Button).disabled
    assert reason in text_of(app, "#why")
    await pilot.press("ctrl+n")
    await settle(pilot)
    assert app.step == step


async def test_busy_port_is_shown_in_place_and_blocks() -> None:
    backend = FakeBackend()
    backend.busy = {5000}
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("network")
        await settle(pilot)
        assert "BUSY" in text_of(app, "#state-mlflow")
        await assert_blocked(pilot, app, "network", "port 5000 (mlflow) is in use")
        app.screen.query_one("#port-mlflow", Input).value = "5055"
        await settle(pilot)
        assert "free" in text_of(app, "#state-mlflow")
        assert not app.screen.query_one("#next", Button).disabled
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.step == "cluster"
        assert app.state.answers().ports.mlflow == 5055


async def test_duplicate_port_and_bad_bind_address_block() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("network")
        await settle(pilot)
        app.screen.query_one("#port-workbench", Input).value = "5000"
        await settle(pilot)
        assert "DUPLICATE of mlflow" in text_of(app, "#state-workbench")
        await assert_blocked(pilot, app, "network", "repeats ports.mlflow")
        app.screen.query_one("#port-workbench", Input).value = "8888"
        app.screen.query_one("#bind", Input).value = "localhost"
        await settle(pilot)
        assert "INVALID" in text_of(app, "#bind-state")
        await assert_blocked(pilot, app, "network", "not an IP address")


async def test_tls_switch_shows_the_gateway_rows_and_checks_them() -> None:
    backend = FakeBackend()
    backend.busy = {5443}
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("network")
        await settle(pilot)
        assert not app.screen.query_one("#port-gateway_mlflow").parent.display  # off: hidden, not checked
        assert not app.screen.query_one("#next", Button).disabled
        app.screen.query_one("#tls", Checkbox).value = True
        await settle(pilot)
        assert app.screen.query_one("#port-gateway_mlflow").parent.display
        assert "BUSY" in text_of(app, "#state-gateway_mlflow")
        await assert_blocked(pilot, app, "network", "port 5443 (gateway_mlflow) is in use")
        app.screen.query_one("#port-gateway_mlflow", Input).value = "5444"
        app.screen.query_one("#listen", Input).value = "everywhere"
        await settle(pilot)
        await assert_blocked(pilot, app, "network", "gateway address 'everywhere' is not an IP address")
        app.screen.query_one("#listen", Input).value = "0.0.0.0"
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.step == "cluster"
        tls = app.state.answers().tls
        assert (
            tls.enabled
            and tls.listen_address == "0.0.0.0"
            and app.state.answers().ports.gateway_mlflow == 5444
        )


async def test_bad_s3_endpoint_shows_the_error_and_blocks() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.set("object_store.kind", "s3")
        app.goto("storage")
        await settle(pilot)
        await assert_blocked(pilot, app, "storage", "enter the S3 endpoint URL")
        screen = app.screen
        screen.query_one("#s3-endpoint", Input).value = "http://bad.invalid:9"
        screen.query_one("#s3-access_key", Input).value = "AKIA"
        screen.query_one("#s3-secret", Input).value = "x"
        await settle(pilot)
        await assert_blocked(pilot, app, "storage", "test the connection first")
        await pilot.click("#test")
        await settle(pilot)
        assert "FAILED: Could not connect to the endpoint URL" in text_of(app, "#s3-result")
        await assert_blocked(pilot, app, "storage", "S3 test failed")
        screen.query_one("#s3-endpoint", Input).value = "http://good.local:9"
        await pilot.click("#test")
        await settle(pilot)
        assert "OK" in text_of(app, "#s3-result")
        assert not screen.query_one("#next", Button).disabled


async def test_preflight_failure_blocks_but_warning_and_busy_port_do_not() -> None:
    backend = FakeBackend()
    backend.checks.append(Check("port 9090", "fail", "prometheus http: 9090 is in use", "stop it"))
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("preflight")
        await settle(pilot)
        assert "WARN memory" in text_of(app, "#checks") or "WARN" in str(
            [str(s.render()) for s in app.screen.query(".check")]
        )
        assert not app.screen.query_one("#next", Button).disabled
        backend.checks.append(Check("binary prometheus", "fail", "missing", "apt-get install prometheus"))
        await pilot.click("#rerun")
        await settle(pilot)
        lines = " ".join(str(s.render()) for s in app.screen.query(".check"))
        assert "FAIL binary prometheus: missing" in lines
        assert "fix: apt-get install prometheus" in lines
        await assert_blocked(pilot, app, "preflight", "1 failing check(s): binary prometheus")


async def test_gpu_on_without_a_gpu_blocks() -> None:
    backend = FakeBackend()
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("gpu")
        await settle(pilot)
        assert "GPUs detected: none" in text_of(app, "#detected")
        await pilot.press("down", "space")  # auto -> on
        await settle(pilot)
        await assert_blocked(pilot, app, "gpu", "needs an NVIDIA GPU")
        await pilot.press("down", "space")  # on -> off
        await settle(pilot)
        assert not app.screen.query_one("#next", Button).disabled


async def test_components_total_follows_the_switches() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("components")
        await settle(pilot)
        assert "~2624 MiB for 5 service(s)" in text_of(app, "#total")
        await pilot.press("tab", "space")  # mlflow off
        await settle(pilot)
        assert "~1856 MiB for 4 service(s)" in text_of(app, "#total")
        assert app.state.answers().components.mlflow is False


async def test_dashboard_shows_services_metrics_drift_and_runs() -> None:
    backend = FakeBackend()
    backend.dashboard = {
        "model": "breast_cancer v3",
        "rps": "12.50",
        "p99": "8.1 ms",
        "drift": [("mean radius", 0.31), ("mean area", 0.05)],
        "runs": [{"id": "abcdef123456", "pipeline": "retrain", "state": "succeeded", "duration": 75.0}],
    }
    app = make_app(backend, mode="status")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        services = app.screen.query_one("#services", DataTable)
        assert services.row_count == 5
        assert services.get_row_at(0)[:3] == ["mlflow", "healthy", "1m05s"]
        assert "breast_cancer v3" in text_of(app, "#model") and "8.1 ms" in text_of(app, "#model")
        drift = app.screen.query_one("#drift", DataTable)
        assert drift.get_row_at(0) == ["mean radius", "0.310", "DRIFT"]
        assert drift.get_row_at(1) == ["mean area", "0.050", "ok"]
        runs = app.screen.query_one("#runs", DataTable)
        assert runs.get_row_at(0) == ["abcdef12", "retrain", "succeeded", "-", "1m15s"]


async def test_dashboard_restart_asks_first_and_log_opens() -> None:
    backend = FakeBackend()
    app = make_app(backend, mode="status")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "s")
        await pilot.pause()
        await pilot.press("n")
        await settle(pilot)
        assert backend.restarted == []
        await pilot.press("s")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot)
        assert backend.restarted == ["workbench"]
        await pilot.press("l")
        await settle(pilot)
        assert "workbench line 2" in "\n".join(str(line) for line in app.screen.query_one("#log").lines)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen.query_one("#services")


async def test_dashboard_shows_dashes_for_missing_data() -> None:
    app = make_app(mode="status")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "requests/s: -" in text_of(app, "#model")
        assert app.screen.query_one("#runs", DataTable).get_row_at(0)[0] == "no pipeline runs yet"
        assert app.screen.query_one("#drift", DataTable).get_row_at(0)[0] == "no drift data yet"


async def test_review_shows_the_file_that_will_be_written() -> None:
    from textual.widgets import TextArea

    from appliance.answers_file import render_answers

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.state.set("profile", "edge")
        app.goto("review")
        await settle(pilot)
        assert app.screen.query_one("#answers-text", TextArea).text == render_answers(app.state.answers())
        assert "profile: edge" in app.screen.query_one("#answers-text", TextArea).text
        assert "/srv/appliance/appliance.yaml" in text_of(app, "#target")


async def test_runtime_choice_is_written() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("tab", "down", "space")  # runtime local -> the next one offered
        await settle(pilot)
        assert app.state.answers().runtime != "local"
        assert app.state.answers().profile == "lab"

"""Every screen at 80x24, compared with the committed SVG snapshots (pytest-textual-snapshot).

The fake backend fixes everything host-specific (paths, ports, GPUs, clock, statuses), so a
snapshot changes only when a screen does. Regenerate after an intended change with
``pytest tests/unit/test_tui_snapshots.py --snapshot-update`` and review the SVGs.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from appliance.preflight import Check
from tests.unit._tui_fixtures import FakeBackend, make_app
from tui.app import ApplianceApp

pytestmark = pytest.mark.timeout(120)
SIZE = (80, 24)


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    # A blinking cursor makes the picture depend on the clock: hold it still.
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def at(
    step: str, prepare: Callable[[ApplianceApp], None] | None = None
) -> Callable[[Pilot], Awaitable[None]]:
    """A run_before that prepares the state, shows ``step`` and waits for its workers."""

    async def run_before(pilot: Pilot) -> None:
        app = pilot.app
        assert isinstance(app, ApplianceApp)
        if prepare:
            prepare(app)
        app.goto(step)
        await settle(pilot)

    return run_before


def test_welcome(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("welcome"))


def test_preflight_with_a_failure(snap_compare) -> None:
    backend = FakeBackend()
    backend.checks.append(
        Check(
            "binary prometheus", "fail", "prometheus needs /usr/bin/prometheus", "apt-get install prometheus"
        )
    )
    assert snap_compare(make_app(backend), terminal_size=SIZE, run_before=at("preflight"))


def test_components(snap_compare) -> None:
    def prepare(app: ApplianceApp) -> None:
        app.state.set("components.serving", False)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("components", prepare))


def test_storage_with_a_failed_s3_test(snap_compare) -> None:
    def prepare(app: ApplianceApp) -> None:
        app.state.set("object_store.kind", "s3")
        app.state.set("object_store.endpoint", "http://bad.example:9000")
        app.state.set("object_store.access_key", "AKIAEXAMPLE")
        app.state.s3_secret = "secret"

    async def run_before(pilot: Pilot) -> None:
        await at("storage", prepare)(pilot)
        await pilot.click("#test")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_gpu(snap_compare) -> None:
    backend = FakeBackend()
    backend.gpus = ["NVIDIA L4, 23034 MiB"]
    assert snap_compare(make_app(backend), terminal_size=SIZE, run_before=at("gpu"))


def test_network_with_a_busy_port(snap_compare) -> None:
    backend = FakeBackend()
    backend.busy = {9090}
    assert snap_compare(make_app(backend), terminal_size=SIZE, run_before=at("network"))


def test_network_with_tls_on(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await at("network")(pilot)
        pilot.app.screen.query_one("#tls").value = True
        pilot.app.screen.query_one("#listen", Input).value = "0.0.0.0"
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_review_plan_tab(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await at("review")(pilot)
        pilot.app.screen.query_one("#review-tabs").active = "tab-plan"
        pilot.app.screen.query_one("#next").focus()
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_install_in_progress(snap_compare) -> None:
    backend = FakeBackend()
    backend.hold_after_first = threading.Event()

    async def run_before(pilot: Pilot) -> None:
        pilot.app.goto("install")
        for _ in range(5):
            await pilot.pause(0.1)

    try:
        assert snap_compare(make_app(backend), terminal_size=SIZE, run_before=run_before)
    finally:
        backend.hold_after_first.set()


def test_done(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=at("done"))


def test_dashboard(snap_compare) -> None:
    backend = FakeBackend()
    backend.dashboard = {
        "model": "breast_cancer v3",
        "rps": "12.50",
        "p99": "8.1 ms",
        "replicas": "serving replicas: 2 ready, 3 asked (min 1, max 4; 0 replaced)\n"
        "  last autoscaler decision: stable: concurrency 5.1 over 60 s wants 3 (target 2 x 0.7)",
        "drift": [("mean radius", 0.31), ("mean texture", 0.12)],
        "runs": [
            {
                "id": "9f2c41d0aa",
                "pipeline": "retrain",
                "state": "succeeded",
                "outcome": "promoted",
                "duration": 95.0,
            },
            {"id": "11aa22bb33", "pipeline": "retrain", "state": "failed", "outcome": None, "duration": 12.0},
        ],
    }
    assert snap_compare(make_app(backend, mode="status"), terminal_size=SIZE, run_before=at("dashboard"))


def test_dashboard_log_modal(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await at("dashboard")(pilot)
        await pilot.press("l")
        await settle(pilot)

    assert snap_compare(make_app(mode="status"), terminal_size=SIZE, run_before=run_before)


def test_step_picker(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await at("review")(pilot)
        await pilot.press("ctrl+e")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_bad_bind_address_marked(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        await at("network")(pilot)
        pilot.app.screen.query_one("#bind", Input).value = "localhost"
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)

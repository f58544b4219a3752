"""The cluster step, the per-host install progress and the cluster's done screen at 80x24,
compared with committed SVG snapshots (pytest-textual-snapshot), over the recorded runs of
``test_tui_cluster``.

The same scenes make the pictures in docs/images (docs/cluster.md shows them)::

    python -m tests.unit.test_tui_cluster_snapshots docs/images

Regenerate the snapshots after an intended change with ``--snapshot-update`` and review them.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from appliance.answers import Answers
from tests.unit._tui_fixtures import make_app
from tests.unit.test_tui_cluster import ClusterBackend
from tui.app import ApplianceApp

pytestmark = pytest.mark.timeout(120)
SIZE = (80, 24)
Scene = tuple[ApplianceApp, Callable[[Pilot], Awaitable[None]], Callable[[], None]]
THREE_HOSTS = {
    "bind_address": "0.0.0.0",
    "cluster": {
        "ssh_user": "debian",
        "hosts": [
            {"name": "ctl1", "address": "10.0.0.1", "groups": ["control", "storage", "monitoring"]},
            {"name": "gpu1", "address": "10.0.0.2", "groups": ["train_workers"]},
            {"name": "web1", "address": "10.0.0.3", "groups": ["serving", "gateway"]},
        ],
    },
}


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def step_with_a_bad_name() -> Scene:
    """Three hosts; the third is being renamed to a group's name, and the step says what to do."""

    async def run_before(pilot: Pilot) -> None:
        pilot.app.goto("cluster")  # type: ignore[attr-defined]
        await settle(pilot)
        screen = pilot.app.screen
        screen.query_one(f"#name-{screen.keys[2]}", Input).value = "serving"  # type: ignore[attr-defined]
        screen.query_one("#next").focus()
        await settle(pilot)

    return make_app(ClusterBackend(), answers=Answers.model_validate(THREE_HOSTS)), run_before, lambda: None


def three_hosts() -> ClusterBackend:
    """The recorded runs with a third host doing what the second does."""
    backend = ClusterBackend()
    web1 = [("web1", status, task) for host, status, task in backend.recorded["up"] if host == "gpu1"]
    backend.recorded = {
        "preflight": [*backend.recorded["preflight"], ("web1", "ok", "Gathering Facts")],
        "up": [*backend.recorded["up"][:5], *web1, *backend.recorded["up"][5:]],
    }
    return backend


def progress_mid_up() -> Scene:
    """``cluster up`` half way: preflight passed, each host's counts and task so far."""
    backend = three_hosts()
    backend.hold = threading.Event()
    backend.hold_seconds = 3  # the picture is taken as soon as the events before the hold landed

    async def run_before(pilot: Pilot) -> None:
        pilot.app.goto("install")  # type: ignore[attr-defined]
        for _ in range(200):
            if backend.holding.is_set():
                break
            await pilot.pause(0.05)
        for _ in range(5):  # the events sent before the hold land
            await pilot.pause(0.05)

    app = make_app(backend, answers=Answers.model_validate(THREE_HOSTS))
    return app, run_before, backend.hold.set


def done() -> Scene:
    async def run_before(pilot: Pilot) -> None:
        pilot.app.goto("install")  # type: ignore[attr-defined]
        for _ in range(20):
            await settle(pilot)
            if pilot.app.step == "done":  # type: ignore[attr-defined]
                break

    return make_app(three_hosts(), answers=Answers.model_validate(THREE_HOSTS)), run_before, lambda: None


def compare(snap_compare: Callable[..., bool], scene: Scene) -> None:
    app, run_before, release = scene
    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    finally:
        release()


def test_cluster_step_with_a_bad_host_name(snap_compare: Callable[..., bool]) -> None:
    compare(snap_compare, step_with_a_bad_name())


def test_cluster_install_progress(snap_compare: Callable[..., bool]) -> None:
    compare(snap_compare, progress_mid_up())


def test_cluster_done(snap_compare: Callable[..., bool]) -> None:
    compare(snap_compare, done())


async def save(scene: Scene, folder: Path, name: str) -> None:
    app, run_before, release = scene
    async with app.run_test(size=SIZE) as pilot:
        await run_before(pilot)
        app.save_screenshot(name, str(folder))
        release()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
    asyncio.run(save(step_with_a_bad_name(), target, "tui-cluster-step.svg"))
    asyncio.run(save(progress_mid_up(), target, "tui-cluster-progress.svg"))

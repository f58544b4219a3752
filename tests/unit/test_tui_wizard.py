"""The wizard walked with Pilot for each profile: the answers file it writes is what the choices mean.

Each walk drives the screens with keys (as a person would), installs through the fake engine and
then reads the written file back with ``parse_answers``, comparing it with the Answers the
choices stand for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from textual.pilot import Pilot

from appliance.answers import Answers
from appliance.answers_file import parse_answers
from tests.unit._tui_fixtures import FakeBackend, make_app
from tui.widgets.service_progress import ServiceProgress

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def settle(pilot: Pilot) -> None:
    """Let workers finish and their messages land."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def wait_for_step(pilot: Pilot, expect: str, seconds: float = 20) -> None:
    """Settle until the wizard shows ``expect``: on a loaded machine the install worker's last
    events can land after a first settle."""
    import time

    deadline = time.monotonic() + seconds
    while pilot.app.step != expect and time.monotonic() < deadline:  # type: ignore[attr-defined]
        await settle(pilot)
        await pilot.pause(0.1)
    assert pilot.app.step == expect  # type: ignore[attr-defined]


async def next_step(pilot: Pilot, expect: str) -> None:
    await pilot.press("ctrl+n")
    await settle(pilot)
    assert pilot.app.step == expect  # type: ignore[attr-defined]


def written(tmp_path: Path) -> Answers:
    return parse_answers((tmp_path / "out.yaml").read_text(), "out.yaml")


async def test_lab_walk_writes_the_answers_it_shows(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    backend = FakeBackend(write_to=out)
    app = make_app(backend, out=out, state_dir=tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.step == "welcome"
        await next_step(pilot, "preflight")
        await next_step(pilot, "components")
        # object_store has focus; Tab to serving (5th) and controller (6th), space toggles.
        await pilot.press("tab", "tab", "tab", "tab", "space", "tab", "space")
        await next_step(pilot, "storage")
        await pilot.press("down", "down", "down", "down", "space")  # auto -> filesystem
        await next_step(pilot, "gpu")
        await next_step(pilot, "network")
        await next_step(pilot, "cluster")  # this machine only
        await next_step(pilot, "review")
        await next_step(pilot, "done")  # the fake install finishes at once
    expected = Answers.model_validate(
        {
            "profile": "lab",
            "state_dir": str(tmp_path / "state"),
            "components": {"serving": False, "controller": False},
            "object_store": {"kind": "filesystem"},
        }
    )
    assert written(tmp_path) == expected
    assert backend.up_calls == 1


async def test_edge_walk_with_gpu_off_and_tls_on(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    app = make_app(FakeBackend(write_to=out), out=out, state_dir=tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "space")  # lab -> edge
        await next_step(pilot, "preflight")
        await next_step(pilot, "components")
        await next_step(pilot, "storage")
        await pilot.press("down", "space")  # auto -> minio
        await next_step(pilot, "gpu")
        await pilot.press("down", "down", "space")  # auto -> off
        await next_step(pilot, "network")
        # minio's two ports are shown because the store is minio on edge
        assert app.screen.query("#port-minio") and not app.screen.query("#port-mlflow")
        # TLS on, the gateway facing outward while the services stay on loopback
        await pilot.press("tab", "space", "tab", *"0.0.0.0")
        await settle(pilot)
        assert app.screen.query_one("#port-gateway_serving").parent.display
        assert not app.screen.query("#port-gateway_mlflow")  # no MLflow on edge: nothing to front
        await next_step(pilot, "cluster")  # this machine only
        await next_step(pilot, "review")
        await next_step(pilot, "done")
    expected = Answers.model_validate(
        {
            "profile": "edge",
            "state_dir": str(tmp_path / "s"),
            "object_store": {"kind": "minio"},
            "gpu": {"mode": "off"},
            "tls": {"enabled": True, "listen_address": "0.0.0.0"},
        }
    )
    assert written(tmp_path) == expected


async def test_custom_walk_with_external_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_TEST_S3_SECRET", raising=False)
    out = tmp_path / "out.yaml"
    initial = Answers.model_validate({"object_store": {"secret_key_env": "APPLIANCE_TEST_S3_SECRET"}})
    app = make_app(FakeBackend(write_to=out), answers=initial, out=out, state_dir=tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "space")  # lab -> custom
        await next_step(pilot, "preflight")
        await next_step(pilot, "components")
        await pilot.press("tab", "tab", "tab", "space")  # monitoring off
        await next_step(pilot, "storage")
        await pilot.press("down", "down", "down", "space")  # auto -> s3
        await pilot.press("tab")
        await pilot.press(*"http://s3.local:9000")
        await pilot.press("tab", "tab", *"AKIAEXAMPLE", "tab", *"s3cr3t")
        await pilot.press("ctrl+n")
        assert app.step == "storage"  # not tested yet: blocked
        await pilot.click("#test")
        await settle(pilot)
        assert "OK" in str(app.screen.query_one("#s3-result").render())
        await next_step(pilot, "gpu")
        await next_step(pilot, "network")
        await next_step(pilot, "cluster")  # this machine only
        await next_step(pilot, "review")
        await next_step(pilot, "done")  # the fake install finishes at once
    text = (tmp_path / "out.yaml").read_text()
    assert "s3cr3t" not in text
    assert os.environ["APPLIANCE_TEST_S3_SECRET"] == "s3cr3t"
    expected = Answers.model_validate(
        {
            "profile": "custom",
            "state_dir": str(tmp_path / "s"),
            "components": {"monitoring": False},
            "object_store": {
                "kind": "s3",
                "endpoint": "http://s3.local:9000",
                "access_key": "AKIAEXAMPLE",
                "secret_key_env": "APPLIANCE_TEST_S3_SECRET",
            },
        }
    )
    assert written(tmp_path) == expected


async def test_cancel_stops_between_steps_and_resume_finishes() -> None:
    import threading

    backend = FakeBackend()
    backend.hold_after_first = threading.Event()
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("install")
        await pilot.pause()
        await pilot.press("escape")
        backend.hold_after_first.set()
        await settle(pilot)
        assert app.step == "install"
        assert "CANCELLED" in str(app.screen.query_one("#current").render())
        rows = {r.service: r.step_word for r in app.screen.query(ServiceProgress)}
        assert rows["minio" if "minio" in rows else "mlflow"] == "HEALTHY"
        assert not app.screen.query_one("#resume").disabled
        await pilot.click("#resume")
        await wait_for_step(pilot, "done")
    assert backend.up_calls == 2
    assert list(backend.written) == [app.state.answers_out]


async def test_review_jumps_back_to_any_step() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("review")
        await settle(pilot)
        await pilot.press("ctrl+e")
        await pilot.pause()
        await pilot.press("down", "down", "enter")  # 3. Components
        await settle(pilot)
        assert app.step == "components"

"""The wizard's cluster step and the install's per-host progress, driven with Pilot.

The backend is the screens' fake plus a cluster engine that replays task results recorded from
``appliance cluster preflight`` and ``up`` runs (the same ``(host, status, task)`` the engine's
progress sink gives), so no host is contacted; the answers written are read back with
``parse_answers`` and compared with what the choices mean.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, DataTable, Input, Static

from appliance.answers import Answers
from appliance.answers_file import parse_answers
from appliance.cluster.run import ClusterRunError, HostResult
from appliance.context import AppContext
from appliance.errors import PreflightError
from tests.unit._tui_fixtures import FakeBackend, make_app
from tui.screens.cluster import NAME_FIX, cluster_problems
from tui.widgets.host_progress import HostProgress, HostTally

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

Recorded = list[tuple[str, str, str]]
PREFLIGHT: Recorded = [
    ("ctl1", "ok", "Gathering Facts"),
    ("gpu1", "ok", "Gathering Facts"),
    ("ctl1", "ok", "Check the host runs systemd and a usable Python"),
    ("gpu1", "ok", "Check the host runs systemd and a usable Python"),
    ("ctl1", "ok", "Check the host has memory for its services"),
    ("gpu1", "skipped", "Check the GPU driver answers"),
    ("gpu1", "ok", "Check the host has memory for its services"),
]
UP: Recorded = [
    ("ctl1", "ok", "Gathering Facts"),
    ("gpu1", "ok", "Gathering Facts"),
    ("ctl1", "changed", "Create the service account"),
    ("gpu1", "changed", "Create the service account"),
    ("ctl1", "changed", "Write the secrets the host's services read"),
    ("ctl1", "changed", "Start the PostgreSQL unit"),
    ("gpu1", "ok", "Find the virtualenv's Python"),
    ("ctl1", "ok", "Wait for MLflow's health check"),
]


def tally(events: Recorded) -> dict[str, HostResult]:
    """What Ansible's recap says after ``events`` (ok counts changed tasks too)."""
    results: dict[str, HostResult] = {}
    for host, status, _ in events:
        r = results.setdefault(host, HostResult())
        r.ok += status in ("ok", "changed")
        r.changed += status == "changed"
        r.failed += status == "failed"
        r.unreachable += status == "unreachable"
        r.skipped += status == "skipped"
    return results


class ClusterBackend(FakeBackend):
    """The fake backend with a cluster engine replaying recorded runs; a stage may be made to fail."""

    def __init__(self, write_to: Path | None = None) -> None:
        super().__init__(write_to)
        self.cluster_calls: list[str] = []
        self.recorded = {"preflight": PREFLIGHT, "up": UP}
        self.fail: dict[str, Callable[[], Exception]] = {}
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        """Set once ``up`` waits on ``hold`` with its first half of events sent."""
        self.hold_seconds = 10.0
        self.missing: str | None = None
        """How long ``up`` waits at most (the app's exit waits for its worker)."""

    def cluster_missing(self) -> str | None:
        return self.missing

    def this_host(self) -> dict[str, object]:
        return {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]}

    def cluster_run(
        self, ctx: AppContext, action: str, on_progress: Callable[[str, str, str], None] | None = None
    ) -> dict[str, HostResult]:
        assert ctx.answers.cluster is not None, "the cluster engine is only asked with a cluster section"
        self.cluster_calls.append(action)
        events = self.recorded[action]
        for i, event in enumerate(events):
            if on_progress:
                on_progress(*event)
            if self.hold is not None and action == "up" and i == len(events) // 2:
                self.holding.set()
                self.hold.wait(self.hold_seconds)
        failure = self.fail.pop(action, None)
        if failure is not None:
            raise failure()
        return tally(events)


async def settle(pilot: Pilot) -> None:
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def until(pilot: Pilot, done: Callable[[], object], seconds: float = 20) -> None:
    """Let messages land until ``done()`` holds (on a loaded machine a worker's last messages can
    land late); it does not wait for workers, which may be held on purpose."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        await pilot.pause(0.05)
    assert done(), f"still not so after {seconds} s"


async def next_step(pilot: Pilot, expect: str) -> None:
    await pilot.press("ctrl+n")
    await until(pilot, lambda: pilot.app.step == expect)  # type: ignore[attr-defined]


def problem_of(app: App[None], row: int) -> str:
    """The problem line under host row ``row`` (0-based), empty when the row is valid."""
    screen = app.screen
    key = screen.keys[row]  # type: ignore[attr-defined]
    line = screen.query_one(f"#problem-{key}", Static)
    return str(line.render()) if line.display else ""


def resumable(app: App[None]) -> bool:
    """The install stopped and offers Resume."""
    return any(not button.disabled for button in app.screen.query("#resume"))


def why(app: App[None]) -> str:
    return str(app.screen.query_one("#why", Static).render())


async def test_cluster_walk_writes_the_cluster_section(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    backend = ClusterBackend(write_to=out)
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    app = make_app(backend, out=out, state_dir=tmp_path / "state")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for step in ("preflight", "components", "storage", "gpu", "network", "cluster"):
            await next_step(pilot, step)
        assert app.state.get("cluster") is None  # this machine only, until chosen
        await pilot.press("down", "space")  # -> a cluster
        await settle(pilot)
        await pilot.press("tab", "ctrl+u", *"debian", "tab", *str(key))
        # the first row is this machine (ctl1, control); a second host for serving and training
        await pilot.click("#add-host")
        await settle(pilot)
        await pilot.press(*"gpu1", "tab", *"10.0.0.2", "tab", "tab", "tab", "space", "tab", "space")
        await settle(pilot)
        # two hosts cannot share services bound to loopback: the fix is named
        assert "go Back to the network step and set it to 0.0.0.0" in why(app)
        await pilot.press("ctrl+n")
        assert app.step == "cluster"
        await pilot.press("escape")
        await settle(pilot)
        assert app.step == "network"
        app.screen.query_one("#bind", Input).value = "0.0.0.0"
        await settle(pilot)
        await next_step(pilot, "cluster")
        assert app.screen.query_one("#cluster-fields").display  # still a cluster, rows kept
        assert why(app) == ""
        await next_step(pilot, "review")
        shown = app.screen.query_one("#answers-text").text  # type: ignore[attr-defined]
        assert "gpu1" in shown and "train_workers" in shown
        app.screen.query_one("#review-tabs").active = "tab-plan"  # type: ignore[attr-defined]
        await settle(pilot)
        plan = str(app.screen.query_one("#plan-text", Static).render())
        assert "gpu1 (10.0.0.2, serving,train_workers): serving" in plan
        assert "ctl1 (10.0.0.1, control): " in plan and "mlflow" in plan.split("ctl1")[1]
        # what up would do to each host's services: no up yet, so every one is created
        planned = plan.split("What up would do to each host's services:")[1]
        gpu1 = planned.split("gpu1:")[1].split("\n\n")[0]
        assert re.search(r"\+ create\s+serving\s+\(first up of this host\)", gpu1), planned
        assert "mlflow" not in gpu1 and "mlflow" in planned.split("gpu1:")[0]
        assert "stop" not in planned and "recreate" not in planned
        await next_step(pilot, "done")
        table = app.screen.query_one("#urls", DataTable)
        rows = {table.get_row_at(i)[0]: table.get_row_at(i)[1:] for i in range(table.row_count)}
        assert rows == {
            "ctl1": ["control", "changed", "5", "3", "0", "0"],
            "gpu1": ["serving,train_workers", "changed", "3", "1", "0", "0"],
        }
        assert "cluster status" in str(app.screen.query_one("#next-commands", Static).render())
    assert backend.cluster_calls == ["preflight", "up"]
    assert backend.up_calls == 0  # the single-host engine is not asked
    expected = Answers.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "bind_address": "0.0.0.0",
            "cluster": {
                "ssh_user": "debian",
                "ssh_key": str(key),
                "hosts": [
                    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
                    {"name": "gpu1", "address": "10.0.0.2", "groups": ["serving", "train_workers"]},
                ],
            },
        }
    )
    assert parse_answers(out.read_text(), "out.yaml") == expected


async def test_an_invalid_host_shows_the_fix_beside_it(tmp_path: Path) -> None:
    app = make_app(ClusterBackend(), answers=Answers(bind_address="0.0.0.0"))
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("cluster")
        await settle(pilot)
        await pilot.click("#where-cluster")
        await pilot.click("#add-host")
        await settle(pilot)
        name = app.screen.query_one(f"#name-{app.screen.keys[1]}", Input)  # type: ignore[attr-defined]
        address = app.screen.query_one(f"#addr-{app.screen.keys[1]}", Input)  # type: ignore[attr-defined]
        address.value = "10.0.0.2"
        await settle(pilot)
        assert problem_of(app, 1).startswith("name is empty: use letters, digits")
        name.value = "serving"
        await settle(pilot)
        assert "name the host after the machine (e.g. serving1)" in problem_of(app, 1)
        assert problem_of(app, 0) == ""
        assert app.screen.query_one("#next", Button).disabled
        assert why(app).startswith("blocked: host 2: name: host name 'serving' is also a group name")
        assert app.state.get("cluster") is None  # nothing invalid reaches the answers
        name.value = "ctl1"
        await settle(pilot)
        assert "'ctl1' is on another row too" in problem_of(app, 1)
        name.value = "web 1"
        await settle(pilot)
        assert "holds characters other than" in problem_of(app, 1)
        name.value = "web1"
        address.value = ""
        await settle(pilot)
        assert problem_of(app, 1).startswith("address: type the IP address or DNS name")
        address.value = "web1.lab.example"
        await settle(pilot)
        assert problem_of(app, 1) == "" and why(app) == ""
        app.screen.query_one("#ssh-key", Input).value = str(tmp_path / "missing")
        await settle(pilot)
        key_state = str(app.screen.query_one("#ssh-key-state", Static).render())
        assert key_state.startswith(f"no file at {tmp_path / 'missing'}: give a private key's path")
        app.screen.query_one("#ssh-key", Input).value = ""
        app.screen.query_one("#ssh-user", Input).value = ""
        await settle(pilot)
        assert "SSH user is empty" in why(app)
        app.screen.query_one("#ssh-user", Input).value = "root"
        await settle(pilot)
        assert [h["name"] for h in app.state.get("cluster")["hosts"]] == ["ctl1", "web1"]
        # removing a row takes its host out of the section
        await pilot.click(f"#rm-{app.screen.keys[0]}")  # type: ignore[attr-defined]
        await settle(pilot)
        assert [h["name"] for h in app.state.get("cluster")["hosts"]] == ["web1"]
        await pilot.click(f"#rm-{app.screen.keys[0]}")  # type: ignore[attr-defined]
        await settle(pilot)
        assert "no hosts: add one" in why(app)


async def test_this_machine_only_keeps_the_single_host_path(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    backend = ClusterBackend(write_to=out)
    app = make_app(backend, out=out, state_dir=tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("cluster")
        await settle(pilot)
        await pilot.click("#where-cluster")
        await settle(pilot)
        assert app.state.get("cluster")["hosts"][0]["name"] == "ctl1"  # one host: valid on loopback
        await pilot.click("#where-single")
        await settle(pilot)
        assert app.state.get("cluster") is None
        assert not app.screen.query_one("#cluster-fields").display
        await next_step(pilot, "review")
        assert "cluster: null" in app.screen.query_one("#answers-text").text  # type: ignore[attr-defined]
        await next_step(pilot, "done")
    assert backend.cluster_calls == [] and backend.up_calls == 1
    assert parse_answers(out.read_text(), "out.yaml").cluster is None


async def test_a_machine_without_ansible_is_told_how_to_get_it() -> None:
    backend = ClusterBackend()
    backend.missing = (
        "Ansible is not installed here: run scripts/bootstrap.sh lab,cluster (the cluster extra)"
    )
    app = make_app(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("cluster")
        await settle(pilot)
        assert why(app) == ""  # this machine only needs no Ansible
        await pilot.click("#where-cluster")
        await settle(pilot)
        assert why(app) == f"blocked: {backend.missing}"
        assert "bootstrap.sh lab,cluster" in str(app.screen.query_one("#hosts-problem", Static).render())
        assert app.state.get("cluster") is None


async def test_answers_with_a_cluster_open_on_it() -> None:
    answers = Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "cluster": {
                "ssh_user": "ops",
                "venv": "/srv/venv",
                "hosts": [
                    {"name": "a1", "address": "192.0.2.1", "groups": ["control", "storage"]},
                    {"name": "b1", "address": "192.0.2.2", "groups": ["edge"], "ssh_port": 2222},
                ],
            },
        }
    )
    app = make_app(ClusterBackend(), answers=answers)
    async with app.run_test(size=(80, 24)) as pilot:
        app.goto("cluster")
        await settle(pilot)
        assert app.screen.query_one("#cluster-fields").display
        keys = app.screen.keys  # type: ignore[attr-defined]
        assert app.screen.query_one(f"#grp-{keys[0]}-storage", Checkbox).value
        assert not app.screen.query_one(f"#grp-{keys[0]}-serving", Checkbox).value
        assert app.screen.query_one(f"#grp-{keys[1]}-edge", Checkbox).value
        assert app.state.answers().cluster == answers.cluster  # fields the step does not show stay


async def test_preflight_then_up_shows_each_host_and_then_the_done_list() -> None:
    backend = ClusterBackend()
    backend.hold = threading.Event()
    answers = Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "cluster": {
                "hosts": [
                    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
                    {"name": "gpu1", "address": "10.0.0.2", "groups": ["train_workers"]},
                ]
            },
        }
    )
    app = make_app(backend, answers=answers)
    async with app.run_test(size=(100, 30)) as pilot:
        app.goto("install")
        await until(pilot, backend.holding.is_set)
        for _ in range(5):  # the events sent before the hold land
            await pilot.pause(0.05)
        table = app.screen.query_one(HostProgress)
        # mid-up: preflight's counts are gone, up's so far are shown with the task running
        task = "Write the secrets the host's services read"
        assert table.tallies["ctl1"] == HostTally("up", "running", 3, 2, 0, 0, task)
        assert table.get_row("gpu1")[:4] == ["gpu1", "running", "2", "1"]
        assert "a cluster of 2 hosts" in str(app.screen.query_one("#step-title").render())
        assert str(app.screen.query_one("#stage").render()) == "cluster up "
        backend.hold.set()
        await until(pilot, lambda: app.step == "done")
    assert app.cluster_results["ctl1"].changed == 3


async def test_an_unreachable_host_is_shown_and_resume_completes() -> None:
    backend = ClusterBackend()
    unreachable = {"ctl1": HostResult(ok=6, changed=3), "gpu1": HostResult(ok=1, unreachable=1)}
    unreachable["gpu1"].messages.append("Find the virtualenv's Python: Failed to connect to the host via ssh")
    backend.fail["up"] = lambda: ClusterRunError("up", unreachable)
    answers = Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "cluster": {
                "hosts": [
                    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
                    {"name": "gpu1", "address": "10.0.0.2", "groups": ["serving"]},
                ]
            },
        }
    )
    app = make_app(backend, answers=answers)
    async with app.run_test(size=(100, 30)) as pilot:
        app.goto("install")
        await until(pilot, lambda: resumable(app))
        assert app.step == "install"
        table = app.screen.query_one(HostProgress)
        assert table.get_row("gpu1")[:6] == ["gpu1", "unreachable", "1", "0", "0", "1"]
        assert table.get_row("gpu1")[6].startswith("Find the virtualenv's")
        assert table.get_row("ctl1")[1] == "changed"
        assert "FAILED: cluster up failed on 1 of 2 hosts" in str(app.screen.query_one("#current").render())
        assert not app.screen.query_one("#resume", Button).disabled
        await pilot.click("#resume")
        await until(pilot, lambda: app.step == "done")
    assert backend.cluster_calls == ["preflight", "up", "preflight", "up"]


async def test_a_failed_preflight_marks_the_host_and_stops_before_up() -> None:
    backend = ClusterBackend()
    fix = "gpu1 has 512 MiB of memory: give it 1 GiB or more"
    backend.fail["preflight"] = lambda: PreflightError([("gpu1", "failed", fix)])
    answers = Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "cluster": {
                "hosts": [
                    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
                    {"name": "gpu1", "address": "10.0.0.2", "groups": ["serving"]},
                ]
            },
        }
    )
    app = make_app(backend, answers=answers)
    async with app.run_test(size=(100, 30)) as pilot:
        app.goto("install")
        await until(pilot, lambda: resumable(app))
        table = app.screen.query_one(HostProgress)
        assert table.tallies["gpu1"].state == "failed" and table.tallies["gpu1"].task == fix
        assert table.get_row("ctl1")[1] == "ok"
        assert "FAILED: preflight failed" in str(app.screen.query_one("#current").render())
    assert backend.cluster_calls == ["preflight"]


class ProgressApp(App[None]):
    def compose(self) -> ComposeResult:
        yield HostProgress(["ctl1", "gpu1"])


async def test_host_progress_renders_a_recorded_run() -> None:
    app = ProgressApp()
    async with app.run_test(size=(100, 10)) as pilot:
        table = app.query_one(HostProgress)
        assert table.get_row("ctl1")[:2] == ["ctl1", "waiting"]
        table.start("preflight")
        for event in PREFLIGHT:
            table.record(*event)
        await pilot.pause()
        assert table.get_row("gpu1")[:6] == ["gpu1", "running", "3", "0", "0", "0"]
        assert table.tallies["gpu1"].stage == "preflight"
        assert table.get_row("gpu1")[6] == "Check the host has memo…"  # long tasks are cut to fit
        table.start("up")
        assert table.get_row("ctl1")[:3] == ["ctl1", "waiting", "0"]
        for event in UP:
            table.record(*event)
        table.record("gpu1", "unreachable", "Install the virtualenv from the offline wheelhouse")
        table.record("gpu1", "ok", "Gathering Facts")  # a later event does not hide the failure
        await pilot.pause()
        assert table.get_row("ctl1")[:6] == ["ctl1", "running", "5", "3", "0", "0"]
        assert table.get_row("gpu1")[:6] == ["gpu1", "unreachable", "4", "1", "0", "1"]
        final = tally(UP)
        final["gpu1"].unreachable = 1
        table.finish(final)
        await pilot.pause()
        assert table.get_row("ctl1")[1:6] == ["changed", "5", "3", "0", "0"]
        assert table.get_row("gpu1")[1] == "unreachable"


async def test_cluster_problems_accepts_a_valid_draft_and_keys_each_problem() -> None:
    draft: dict[str, Any] = {
        "ssh_user": "root",
        "hosts": [{"name": "a1", "address": "10.0.0.1", "groups": ["control"]}],
    }
    cluster, problems = cluster_problems(draft, "127.0.0.1")
    assert problems == {} and cluster is not None and cluster.hosts[0].name == "a1"
    draft["hosts"].append({"name": "edge", "address": "10.0.0.2", "groups": []})
    cluster, problems = cluster_problems(draft, "127.0.0.1")
    assert cluster is None
    assert set(problems) == {"host-1", "hosts"}
    assert "list 'edge' in its groups" in problems["host-1"]
    assert "bind address is 127.0.0.1" in problems["hosts"]
    # one problem a row, the first from the left
    draft["hosts"][1] = {"name": "", "address": "", "groups": []}
    assert cluster_problems(draft, "0.0.0.0")[1] == {"host-1": f"name is empty: {NAME_FIX}"}
    draft["hosts"][1] = {"name": "a1", "address": "", "groups": []}
    assert cluster_problems(draft, "0.0.0.0")[1] == {
        "host-0": "name 'a1' is on another row too: give each host its own name",
        "host-1": "name 'a1' is on another row too: give each host its own name",
    }

"""Upgrade from the previous release to the working tree, on one real lab stack (local runtime).

The previous release is cut from this repository's own history (``releases.PREVIOUS_RELEASE``:
a ``git archive`` of its commit), installed side by side in ``STATE/releases/0.1.0``, and its own
``appliance`` brings the stack up, seeds two datasets and trains two versions of a model (one of
them the champion). Then, in order:

1. an upgrade to a broken 0.2.0 (its model server gets a flag it refuses, so it never becomes
   healthy) rolls back by itself: 0.1.0 runs again, serving the same champion with the same data;
2. ``appliance upgrade`` to the working tree under a light inference load: not one request fails
   (the model server's sockets are held across its restart), the same registry, runs and
   champion answers, state.json names 0.2.0, every service runs from release 0.2.0;
3. ``appliance rollback`` returns to 0.1.0 with the same data.

Times, the failed-request count, the requests sent again on a new connection (a kept-alive one
the old server closed as it exited) and the longest answer (the requests that waited for the new
server) are printed (``pytest -s``); docs/upgrade.md quotes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.upgrade import releases
from tests.conftest import run_cli
from tests.integration.test_backup_restore import (
    MODEL,
    Lab,
    lab_answers,
    predict,
    registry,
    rows,
    served_version,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
PREVIOUS = releases.PREVIOUS_RELEASE
USED_PORTS = ("mlflow", "serving_http", "serving_grpc", "serving_metrics")


def previous_source(dest: Path) -> Path:
    """The previous release's tree, from this clone's history."""
    commit = PREVIOUS["commit"]
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(
            f"this clone lacks commit {commit} (release {PREVIOUS['version']}), which the upgrade test "
            "installs as the previous release: a shallow clone? Run `git fetch --unshallow` (CI: clone "
            "with full history, e.g. fetch-depth: 0)"
        )
    tarball = dest / "previous.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(tarball), commit], check=True)
    src = dest / "previous-src"
    with tarfile.open(tarball) as tar:
        tar.extractall(src, filter="data")
    return src


STALE_CONNECTION = ("without sending a response", "Connection reset by peer")
"""How httpx reports a kept-alive connection the server ended before answering on it."""
THREADS = 2
SERVERS_ENDED = 2
"""Model servers that exit under the load of an upgrade: the old one, then the standby."""


class TimedLoad:
    """Two threads posting one row to the model server without pause, like the backup test's
    load, keeping when each request failed and checking each answer against the one before."""

    def __init__(self, lab: Lab, token: str, data: list[list[float]]) -> None:
        self.lab, self.token, self.data = lab, token, data
        self.failures: list[tuple[float, str]] = []
        self.successes: list[float] = []
        self.retried: list[tuple[float, str]] = []
        """Requests sent again because their kept-alive connection closed before any answer."""
        self.expected = predict(lab, token, data[:1])
        self.slowest = 0.0
        self.slow: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, daemon=True) for _ in range(THREADS)]

    @property
    def ok(self) -> int:
        return len(self.successes)

    def __enter__(self) -> TimedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _post(self) -> None:
        row = {"name": "input", "datatype": "FP32", "shape": [1, len(self.data[0])], "data": self.data[:1]}
        body = {"inputs": [row]}
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    reply = self._send(client, body)
                    outputs = reply.json()["outputs"] if reply.is_success else []
                    if [(o["name"], o["data"]) for o in outputs] == self.expected:
                        self.slowest = max(self.slowest, reply.elapsed.total_seconds())
                        if reply.elapsed.total_seconds() > 1:
                            self.slow.append((time.monotonic(), reply.elapsed.total_seconds()))
                        self.successes.append(time.monotonic())
                    else:
                        self.failures.append((time.monotonic(), f"{reply.status_code} {reply.text[:200]}"))
                except httpx.HTTPError as err:
                    self.failures.append((time.monotonic(), repr(err)))
                time.sleep(0.02)

    def _send(self, client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
        """POST once more, on a new connection, when the server ended a kept-alive one before
        any answer: what HTTP clients do for a stale connection (RFC 9112 section 9.3.1; an
        inference has no side effect). A server closes its idle connections as it exits, and a
        request sent at that instant meets the close. The previous release's server exits with
        such a request unread in the socket, and the kernel then ends the connection with a
        reset rather than a clean close: the same stale connection, which Go's HTTP transport,
        for one, also sends again. This release's server closes cleanly (test_serving_stop.py)."""
        try:
            return client.post(f"{self.lab.serving}/infer", json=body)
        except (httpx.RemoteProtocolError, httpx.ReadError) as err:
            if not any(stale in str(err) for stale in STALE_CONNECTION):
                raise
            self.retried.append((time.monotonic(), repr(err)))
            return client.post(f"{self.lab.serving}/infer", json=body)

    def outage(self) -> float:
        times = [t for t, _ in self.failures]
        return max(times) - min(times) if times else 0.0

    def ok_after(self, moment: float) -> int:
        return sum(1 for t in self.successes if t > moment)


def previous_answers(path: Path, state: Path) -> Path:
    """The backup test's lab answers, with only the ports of the services this stack runs (the
    previous release refuses port keys added since)."""
    lab_answers(path, state)
    data = yaml.safe_load(path.read_text())
    data["ports"] = {k: v for k, v in data["ports"].items() if k in USED_PORTS}
    path.write_text(yaml.safe_dump(data))
    return path


def old_cli(lab: Lab, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """The previous release's own ``appliance`` on this stack."""
    release = releases.get(lab.state, PREVIOUS["version"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "MLFLOW_", "PYTHON"))}
    proc = subprocess.run(
        release.cli("--answers", str(lab.answers), "--state-dir", str(lab.state), *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=lab.state.parent,
        check=False,
    )
    assert proc.returncode == 0, (
        f"0.1.0 `{' '.join(args)}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def stamp(lab: Lab) -> str:
    return str(json.loads((lab.state / "state.json").read_text())["appliance_version"])


def journal(lab: Lab) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((lab.state / "upgrade.json").read_text())
    return data


def service_commands(lab: Lab) -> dict[str, str]:
    """Each supervised program's command line (the program files the local runtime writes)."""
    programs = lab.state / "supervisor" / "programs"
    out = {}
    for path in programs.glob("*.conf"):
        line = next(x for x in path.read_text().splitlines() if x.startswith("command="))
        out[path.stem] = line
    return out


def snapshot(lab: Lab) -> dict[str, Any]:
    token = lab.secret("serving_token")
    wait_for("the champion served", lambda: served_version(lab, token))
    return {
        "registry": registry(lab, lab.secret("mlflow_admin_password")),
        "answer": predict(lab, token, rows(lab)),
        "served": served_version(lab, token),
        "token": token,
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("upgrade-lab")
    state = root / "state"
    state.mkdir()
    lab = Lab(previous_answers(root / "appliance.yaml", state), state)
    started = time.monotonic()
    release = releases.install_source(state, previous_source(root))
    releases.activate(state, release)
    print(f"\ninstall release {release.version}: {time.monotonic() - started:.1f} s")
    try:
        old_cli(lab, "up")
        old_cli(lab, "data", "seed", "--dataset", MODEL)
        old_cli(lab, "data", "seed", "--dataset", "wine")
        old_cli(lab, "train", "--dataset", MODEL)
        old_cli(lab, "train", "--dataset", MODEL)
        yield lab
    finally:
        run_cli("down", answers=lab.answers, state=lab.state, check=False, timeout=300)


@pytest.fixture(scope="module")
def before(lab: Lab) -> dict[str, Any]:
    snap = snapshot(lab)
    assert len(snap["registry"]["versions"]) == 2
    assert "champion" in dict(snap["registry"]["aliases"])
    assert stamp(lab) == PREVIOUS["version"]
    return snap


def test_a_failing_upgrade_rolls_back_by_itself(lab: Lab, before: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    for name in ("appliance", "tui", "stacks"):
        shutil.copytree(REPO / name, broken / name, ignore=shutil.ignore_patterns("__pycache__"))
    stack = broken / "stacks" / "services.yaml"
    text = stack.read_text()
    assert text.count('"--wait-for-model",') == 1
    stack.write_text(text.replace('"--wait-for-model",', '"--wait-for-model", "--no-such-flag",'))
    bundle = tmp_path / "broken.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        tar.add(broken, arcname="appliance-broken")

    started = time.monotonic()
    proc = run_cli(
        "upgrade", "--bundle", str(bundle), "--yes", answers=lab.answers, state=lab.state, check=False
    )
    print(f"failed upgrade and its rollback: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "rolled back" in proc.stderr and "serving" in proc.stderr, proc.stderr
    assert journal(lab)["phase"] == "rolled-back"
    assert releases.active(lab.state) == releases.get(lab.state, PREVIOUS["version"])
    assert stamp(lab) == PREVIOUS["version"]
    assert snapshot(lab) == before
    assert all(f"releases/{PREVIOUS['version']}/" in cmd for cmd in service_commands(lab).values())


def test_upgrade_keeps_the_data_and_the_champion(lab: Lab, before: dict[str, Any]) -> None:
    dry = run_cli("upgrade", "--dry-run", answers=lab.answers, state=lab.state)
    assert f"upgrade {PREVIOUS['version']} -> {releases.source_version(REPO)}" in dry.stdout
    assert "appliance" in dry.stdout
    assert journal(lab)["phase"] == "rolled-back"  # still the failed upgrade's: nothing was written
    assert releases.active(lab.state) == releases.get(lab.state, PREVIOUS["version"])

    serving_log = lab.state / "logs" / "serving.log"
    log_mark = serving_log.stat().st_size
    started = time.monotonic()
    with TimedLoad(lab, before["token"], rows(lab)) as load:
        time.sleep(1)
        proc = run_cli("upgrade", "--yes", answers=lab.answers, state=lab.state, check=False, timeout=1200)
        finished = time.monotonic()
        time.sleep(1)
    seconds = time.monotonic() - started
    print(
        f"upgrade: {seconds:.1f} s, {load.ok} requests answered, {len(load.failures)} failed "
        f"over {load.outage():.1f} s ({sorted({f for _, f in load.failures})[:3]}), "
        f"{len(load.retried)} sent again on a new connection, longest answer {load.slowest:.2f} s"
    )
    slow = [(round(t - started, 1), round(e, 1)) for t, e in load.slow]
    print(f"answers slower than 1 s, (s after the start, s): {slow}")
    log = serving_log.read_bytes()[log_mark:].decode(errors="replace")
    print("\n".join(x for x in log.splitlines() if "handover" in x or "error" in x))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "appliance" in proc.stdout and f"{PREVIOUS['version']} -> " in proc.stdout  # the change list
    # The standby took the old server's sockets, then the supervised server the standby's.
    assert log.count("took over the listening sockets") == 2, log[-3000:]
    version = releases.source_version(REPO)
    assert stamp(lab) == version
    assert journal(lab)["phase"] == "done"
    assert all(f"releases/{version}/" in cmd for cmd in service_commands(lab).values())
    assert snapshot(lab) == before
    # The new release's runtime holds the old model server's listening sockets while it is
    # replaced (appliance/runtimes/handover.py): requests wait for the new server, none is
    # refused, and every answer is the champion's.
    assert load.failures == [], load.failures[:5]
    # A thread's connection goes stale at most once per server that exits under it.
    assert len(load.retried) <= THREADS * SERVERS_ENDED, load.retried
    assert load.ok > 0 and load.ok_after(finished) > 0


def test_rollback_by_hand_returns_to_the_previous_release(lab: Lab, before: dict[str, Any]) -> None:
    if journal(lab)["phase"] != "done":
        pytest.skip("the upgrade before it did not finish")
    started = time.monotonic()
    run_cli("rollback", "--yes", answers=lab.answers, state=lab.state, timeout=1200)
    print(f"rollback: {time.monotonic() - started:.1f} s")
    assert stamp(lab) == PREVIOUS["version"]
    assert journal(lab)["phase"] == "rolled-back"
    assert snapshot(lab) == before

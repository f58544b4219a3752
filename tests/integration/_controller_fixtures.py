"""Real processes for the pipeline and controller tests: an MLflow server, the CLI, the controller.

One MLflow server (sqlite backend, its own port) serves the whole session because it takes
tens of seconds to start on two busy cores; every test gets its own state directory, answers
file and experiment names, so tests do not see each other's runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests.conftest import free_port, run_cli, write_answers

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            value = probe()
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs; a zombie counts as gone (PID 1 here may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: never leave a process behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module", name="mlflow_server")
def mlflow_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` with a sqlite backend on a free port; yields its URL. One per
    importing module, stopped at its end (each module that imports this fixture defines its own,
    so a session scope kept every one of them running until the whole run ended)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in teardown
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "art"), "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            "the MLflow server", lambda: proc.poll() is None and httpx.get(f"{url}/health").is_success, 180
        )
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # uvicorn may linger on keep-alive connections
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@dataclass
class Home:
    """A state directory and answers file whose MLflow is the test server; the CLI runs against it."""

    root: Path
    mlflow_url: str
    answers: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        port = int(self.mlflow_url.rsplit(":", 1)[1])
        self.answers = write_answers(self.root / "appliance.yaml", object_store={"kind": "filesystem"})
        data = yaml.safe_load(self.answers.read_text())
        data["ports"]["mlflow"] = port
        self.answers.write_text(yaml.safe_dump(data))

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, answers=self.answers, state=self.state, check=check, timeout=timeout)

    def pipeline(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def env(self) -> dict[str, str]:
        """The data connection the stack would inject (filesystem store, the test MLflow)."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "APPLIANCE_STATE_DIR": str(self.state),
            "APPLIANCE_DATA_KIND": "filesystem",
            "APPLIANCE_DATA_ROOT": str(self.state / "data"),
            "APPLIANCE_DATASETS_BUCKET": "datasets",
            "APPLIANCE_MODELS_BUCKET": "models",
        }


@pytest.fixture(name="home")
def home_fixture(tmp_path: Path, mlflow_server: str) -> Home:
    return Home(tmp_path, mlflow_server)


class Controller:
    """``python -m appliance.workloads.controller`` as a real process on a free port."""

    def __init__(self, home: Home, pipelines_dir: Path, token_file: Path, *extra: str) -> None:
        self.home, self.pipelines_dir, self.token_file, self.extra = home, pipelines_dir, token_file, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.root / f"controller-{self.port}.log"

    def start(self) -> Controller:
        cmd = [
            sys.executable, "-m", "appliance.workloads.controller",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--state-dir", str(self.home.state), "--pipelines-dir", str(self.pipelines_dir),
            "--webhook-token-file", str(self.token_file), *self.extra,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | self.home.env()
            )
        proc = self.proc
        wait_for(
            "the controller's /healthz",
            lambda: self._alive(proc) and httpx.get(f"{self.url}/healthz").is_success,
        )
        return self

    def _alive(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"controller exited {proc.returncode}:\n{self.log_path.read_text()}")
        return True

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=30)

    def post(
        self, path: str, body: Any = None, token: str | None = None, raw: bytes | None = None
    ) -> httpx.Response:
        content = (
            raw if raw is not None else (b"" if body is None else __import__("json").dumps(body).encode())
        )
        headers = {"Content-Type": "application/json"} | self._auth(token)
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=30)

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self._auth(token), timeout=30)

    def _auth(self, token: str | None) -> dict[str, str]:
        """The bearer header: the controller's own token unless ``token`` is given ("" for none)."""
        token = self.token_file.read_text().strip() if token is None else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.get(f"/runs/{run_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(name="controllers")
def controllers_fixture() -> Iterator[list[Controller]]:
    """Collects the controllers a test starts and stops them all afterwards."""
    started: list[Controller] = []
    yield started
    for controller in started:
        controller.stop()


def mlflow_run(url: str, run_id: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(url).get_run(run_id)


def mlflow_children(url: str, parent: Any) -> dict[str, Any]:
    """Child runs of ``parent`` by run name."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient(url).search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return {run.info.run_name: run for run in found}

"""The workbench as the stack starts it, with Elyra: its Run (Elyra's own server API, with the
runtime configuration generated at install) starts a run on a real controller, a drawing the
runner cannot honour is refused naming the node, and in a real browser (Debian's chromium,
headless, driven by Playwright) the pipeline editor shows a drawn retraining pipeline; its
screenshot is kept in build/test-artifacts/. And Jupyter's own port refuses a request body from a
caller without a login before it reads it (appliance/workbench_gate.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.render import render_stack
from tests.conftest import free_port
from tests.integration._controller_fixtures import (  # noqa: F401 - fixtures are found by their names
    Controller,
    Home,
    mlflow_run,
    mlflow_server_fixture,
    stop_process,
    wait_for,
)
from tests.integration._elyra_fixtures import retrain_drawing
from tests.integration._http_probes import partial_upload

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Workbench:
    home: Home
    controller: Controller
    url: str
    token: str
    root: Path
    log: Path

    def api(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"token {self.token}"},
            timeout=120,
        )


@pytest.fixture(scope="module", name="workbench")
def workbench_fixture(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[Workbench]:
    """A controller and the stack's rendered workbench service (command, environment, generated
    files) started as the local runtime starts them."""
    home = Home(tmp_path_factory.mktemp("elyra-workbench"), mlflow_server)
    secrets_dir = home.state / "secrets"
    secrets_dir.mkdir(parents=True)
    token_file = secrets_dir / "controller_webhook_token"
    token_file.write_text("elyra-test-" + os.urandom(12).hex())
    token_file.chmod(0o600)
    controller = Controller(home, home.state / "pipelines", token_file).start()
    port = free_port()
    answers = {
        "object_store": {"kind": "filesystem"},
        "ports": {
            "controller": controller.port,
            "workbench": port,
            "mlflow": int(mlflow_server.rsplit(":", 1)[1]),
        },
    }
    service = render_stack(AppContext(Answers.model_validate(answers), home.state))["workbench"]
    for name, text in service.files.items():
        (home.state / "config" / "workbench" / name).parent.mkdir(parents=True, exist_ok=True)
        (home.state / "config" / "workbench" / name).write_text(text)
    root = home.state / "workbench"
    root.mkdir(parents=True, exist_ok=True)
    log = home.root / "workbench.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            service.command,
            env=os.environ | service.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )
    bench = Workbench(home, controller, f"http://127.0.0.1:{port}", service.env["JUPYTER_TOKEN"], root, log)

    def alive_and_ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the workbench exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        return bench.api("GET", "/elyra/pipeline/runtimes/types").is_success

    try:
        wait_for("the workbench with Elyra", alive_and_ready, 180, 1)
        yield bench
    finally:
        stop_process(proc, grace=20)
        controller.stop()


def _as_submitted(drawing: Path, root: Path) -> dict[str, Any]:
    """The body Elyra's editor posts on Run: node paths relative to the server's root, the file's
    base name as source, the chosen runtime configuration."""
    document = json.loads(drawing.read_text())
    primary = document["pipelines"][0]
    folder = drawing.parent.relative_to(root)
    for node in primary["nodes"]:
        params = node["app_data"]["component_parameters"]
        params["filename"] = str(folder / params["filename"])
    primary["app_data"] |= {
        "name": drawing.stem,
        "source": drawing.name,
        "runtime_config": "appliance",
        "runtime": "appliance",
        "runtime_type": "ARGO",
    }
    return document


def test_elyra_lists_the_appliance_runtime_generated_at_install(workbench: Workbench) -> None:
    types = workbench.api("GET", "/elyra/pipeline/runtimes/types").json()["runtime_types"]
    assert {t["id"]: t["runtime_enabled"] for t in types}.get("ARGO") is True
    runtimes = workbench.api("GET", "/elyra/metadata/runtimes").json()["runtimes"]
    mine = next(r for r in runtimes if r["name"] == "appliance")
    assert mine["display_name"] == "MLOps Appliance"
    assert mine["metadata"]["api_endpoint"] == workbench.controller.url
    images = workbench.api("GET", "/elyra/metadata/runtime-images").json()["runtime-images"]
    assert "localhost/appliance-controller:latest" in {i["metadata"]["image_name"] for i in images}


def test_the_worked_notebook_waits_in_examples(workbench: Workbench) -> None:
    """The rendered command seeds examples/ before JupyterLab starts (appliance/workbench_start.py),
    on the local runtime as in the image."""
    listing = workbench.api("GET", "/api/contents/examples")
    assert listing.status_code == 200, listing.text
    assert "import_your_model.ipynb" in [item["name"] for item in listing.json()["content"]]


def test_run_from_elyra_starts_the_drawing_on_the_controller(workbench: Workbench) -> None:
    drawing = retrain_drawing(workbench.root / "retrain", name="drawn", model="drawn-model")
    answer = workbench.api("POST", "/elyra/pipeline/schedule", _as_submitted(drawing, workbench.root))
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["run_id"]
    run = wait_for(
        "the submitted run", lambda: (r := workbench.controller.run(run_id))["state"] != "running" and r, 180
    )
    assert run["state"] == "succeeded", run
    assert (run["pipeline"], run["model"], run["trigger"], run["version"]) == (
        "drawn",
        "drawn-model",
        "manual",
        "3",
    )
    published = workbench.home.state / "pipelines" / "drawn.pipeline"
    assert published.is_file() and (published.parent / "drawn.files").is_dir()
    listed = workbench.home.cli("pipeline", "runs").stdout
    assert run_id in listed
    parent = mlflow_run(workbench.home.mlflow_url, run["mlflow_run_id"])
    assert (parent.info.status, parent.data.tags["appliance.trigger"]) == ("FINISHED", "manual")
    timings = {s["name"]: round(s["finished"] - s["started"], 1) for s in run["steps"]}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "elyra-run-timings.json").write_text(
        json.dumps({"run": run_id, "seconds": round(run["finished"] - run["started"], 1), "steps": timings})
    )


def test_run_from_elyra_refuses_what_the_runner_cannot_honour_naming_the_node(workbench: Workbench) -> None:
    drawing = retrain_drawing(workbench.root / "secret", name="leaky", model="drawn-model")
    document = json.loads(drawing.read_text())
    train = document["pipelines"][0]["nodes"][1]["app_data"]["component_parameters"]
    train["kubernetes_secrets"] = [{"env_var": "KEY", "name": "creds", "key": "key"}]
    drawing.write_text(json.dumps(document))
    answer = workbench.api("POST", "/elyra/pipeline/schedule", _as_submitted(drawing, workbench.root))
    assert answer.status_code >= 400
    assert "node 'train.ipynb': kubernetes_secrets is set" in answer.text
    assert not (workbench.home.state / "pipelines" / "leaky.pipeline").exists()
    assert "leaky" not in json.dumps(workbench.controller.get("/runs").json())


def test_the_workbench_refuses_a_body_without_a_login_before_it_is_sent(workbench: Workbench) -> None:
    """Tornado reads a whole body (up to 512 MiB) before Jupyter checks the token: the gate checks
    it from the request's head. Announcing 64 MiB and sending 1 MiB with no token, a wrong one or
    the token under a scheme Jupyter does not read gets Jupyter's 403 at once (Jupyter alone would
    wait for the rest), on Jupyter's own API and on an extension's; the token, the token argument
    and the login form's cookie still carry bodies through, and the login form itself takes its
    small body."""
    port = int(workbench.url.rsplit(":", 1)[1])
    for method, path in (("PUT", "/api/contents/refused.txt"), ("POST", "/elyra/pipeline/schedule")):
        for authorization in ("", "token not-the-token", "Bearer not-the-token", f"Basic {workbench.token}"):
            status = partial_upload(port, None, method, path, authorization, announced=64 << 20, sent=1 << 20)
            assert status == 403, (method, path, authorization, status)
    assert not (workbench.root / "refused.txt").exists()
    text = {"type": "file", "format": "text", "content": "kept"}
    assert workbench.api("PUT", "/api/contents/by-header.txt", text).status_code == 201
    by_argument = httpx.put(
        f"{workbench.url}/api/contents/by-argument.txt?token={workbench.token}", json=text
    )
    assert by_argument.status_code == 201, by_argument.text
    with httpx.Client(base_url=workbench.url, timeout=60) as browser:  # the login form, as a browser
        browser.get("/login")
        xsrf = browser.cookies["_xsrf"]
        logged = browser.post("/login", data={"_xsrf": xsrf, "password": workbench.token})
        assert logged.status_code == 302, logged.text
        saved = browser.put("/api/contents/by-cookie.txt", json=text, headers={"X-XSRFToken": xsrf})
        assert saved.status_code == 201, saved.text
    assert {p.name for p in workbench.root.glob("by-*.txt")} == {
        "by-header.txt",
        "by-argument.txt",
        "by-cookie.txt",
    }


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_pipeline_editor_shows_a_drawn_retraining_pipeline(workbench: Workbench, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    retrain_drawing(workbench.root / "retrain", name="drawn", model="drawn-model")
    shot = tmp_path / "elyra-retrain-pipeline.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(f"{workbench.url}/lab/tree/retrain/drawn.pipeline?token={workbench.token}")
            page.get_by_text("train.ipynb").first.wait_for(timeout=120_000)
            page.get_by_text("prepare.py").first.wait_for(timeout=30_000)
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's news prompt
            if news.count():
                news.first.click()
            page.wait_for_timeout(1500)  # let the canvas finish laying out the links
            page.screenshot(path=str(shot))
            labels = page.locator(".d3-node-label").all_inner_texts()
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert {"prepare.py", "train.ipynb"} <= {label.strip() for label in labels}
    assert shot.stat().st_size > 10_000

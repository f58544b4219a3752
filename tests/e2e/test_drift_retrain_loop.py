"""The closed loop on a real lab stack (local runtime) serving two models: drift on one of them is
seen, alerted, retrained on that model's own data, promoted, hot-reloaded and gone, with no failed
request, while the other model's champion, alerts and traffic are untouched.

Model A is ``breast_cancer`` (the demo), model B ``wine`` (another of scikit-learn's classification
sets, 13 features, 3 classes), each bound to its own dataset in the answers' ``models`` list. B's
live traffic and newest data shift first, and its loop closes while A is untouched; then A's do,
while B (now on its v2) is untouched. Each loop's times are measured.

Every service is the real one from the stack (MLflow, the model server, Prometheus, Alertmanager,
the controller, node exporter), the object store included: the bundled SeaweedFS, each service
with its own key (the test reads datasets with the trainer's).
Rule timings are shortened through the answers file. Each stage is asserted
from its own source: the Prometheus API (PSI, the firing alert), the Alertmanager API (the alert
it routed), the controller (the run the alert started), MLflow (the champion alias and the
decision tags) and the model server's metadata (the version it serves). At the end, every metric
name the Grafana dashboards query must exist among the metrics Prometheus scraped from the stack.

The timings and PSI values are printed (``pytest -s``) and written to ``e2e-loop.json`` beside the
answers file.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pandas as pd
import pytest

from appliance.answers_file import load_answers
from appliance.context import AppContext
from appliance.dataconn.client import s3_client
from appliance.monitoring.generate import CONTROLLER_TOKEN_SECRET
from appliance.monitoring.grafana import dashboard_metric_names
from tests.conftest import free_ports, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
MODEL_A, MODEL_B = "breast_cancer", "wine"
"""The two served models; B's traffic and data shift first, then A's."""
PSI_THRESHOLD = 0.2
SHIFT_SIGMAS = 3.0
DASHBOARDS = REPO / "stacks" / "monitoring" / "grafana" / "dashboards"
GPU_ONLY = "DCGM_"  # NVIDIA DCGM exporter metrics: only on hosts with a GPU and the exporter
REPLICAS_ONLY = ("appliance_autoscale_", "appliance_serving_replicas_", "appliance_serving_concurrency_")
"""The replica supervisor's and the autoscaler's series: only with serving.max_replicas above 1
(this stack serves with one model server, which the supervisor execs directly)."""
BACKUPS_ONLY = "appliance_backup_"
"""Scheduled backups' series: only with backup.schedule in the answers (this stack has none)."""
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class Stack:
    answers: Path
    env: dict[str, str]
    urls: dict[str, str]
    token: str
    s3: Any
    state: Path

    def web(self, service: str) -> tuple[str, str]:
        """Basic auth of Prometheus or Alertmanager (user appliance, the stack's generated password)."""
        return "appliance", (self.state / "secrets" / f"{service}_web_password").read_text().strip()

    def cli(self, *args: str, timeout: float = 900) -> str:
        return run_cli(*args, answers=self.answers, env=self.env, timeout=timeout).stdout

    def runs(self, path: str = "", **params: str) -> Any:
        """The controller's run records (``GET /runs``, or ``/runs/ID`` with ``path="/ID"``), read
        with its webhook token as the records ask."""
        token = (self.state / "secrets" / CONTROLLER_TOKEN_SECRET).read_text().strip()
        reply = httpx.get(
            f"{self.urls['controller']}/runs{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        reply.raise_for_status()
        return reply.json()

    def prom(self, query: str) -> list[dict[str, Any]]:
        reply = httpx.get(
            f"{self.urls['prometheus']}/api/v1/query",
            params={"query": query},
            auth=self.web("prometheus"),
            timeout=10,
        )
        reply.raise_for_status()
        return list(reply.json()["data"]["result"])

    def max_psi(self, model: str) -> float | None:
        """The largest feature PSI Prometheus holds for the model; None before the first scrape."""
        rows = self.prom(f'max(appliance_feature_psi{{model="{model}"}})')
        return float(rows[0]["value"][1]) if rows else None

    def full_window_psi(self, model: str) -> float | None:
        """``max_psi`` once the server's drift window is full (PSI of a few rows is noise)."""
        if not self.prom(f'appliance_drift_window_rows{{model="{model}"}} >= 1000'):
            return None
        return self.max_psi(model)

    def served_version(self, model: str) -> str:
        reply = httpx.get(f"{self.urls['serving']}/models/{model}", headers=self.auth, timeout=10)
        return str(reply.json()["versions"][0]) if reply.status_code == 200 else ""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Traffic:
    """Threads posting batches of rows without pause; every failure and served version counted."""

    stack: Stack
    model: str
    rows: np.ndarray
    batch: int = 8
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def switch(self, rows: np.ndarray) -> None:
        self.rows = rows

    def start(self, threads: int = 2) -> Traffic:
        for seed in range(threads):
            thread = threading.Thread(target=self._post, args=(seed,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _post(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        url = f"{self.stack.urls['serving']}/models/{self.model}/infer"
        with httpx.Client(headers=self.stack.auth, timeout=30) as client:
            while not self._stop.is_set():
                rows = self.rows[rng.integers(0, len(self.rows), self.batch)]
                body = {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": list(rows.shape),
                            "data": rows.ravel().tolist(),
                        }
                    ]
                }
                try:
                    reply = client.post(url, json=body)
                except httpx.HTTPError as err:
                    with self._lock:
                        self.failures.append(f"{type(err).__name__}: {err}")
                    continue
                with self._lock:
                    if reply.status_code != 200:
                        self.failures.append(f"{reply.status_code}: {reply.text[:200]}")
                    else:
                        self.versions[reply.json()["model_version"]] += 1
                time.sleep(0.01)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    answers = tmp_path / "appliance.yaml"
    env: dict[str, str] = {}
    try:
        ports = free_ports()
        answers.write_text(
            json.dumps(
                {
                    "profile": "lab",
                    "state_dir": str(tmp_path / "state"),
                    "health_timeout_seconds": 300,
                    "ports": ports,
                    "components": {"workbench": False},
                    "object_store": {"kind": "seaweedfs"},
                    # Each model bound to its own dataset: a drift alert for one retrains it alone.
                    "models": [
                        {"name": MODEL_A, "dataset": MODEL_A},
                        {"name": MODEL_B, "dataset": MODEL_B},
                    ],
                    "serving": {"poll_seconds": 1},
                    "monitoring": {
                        "drift_psi_threshold": PSI_THRESHOLD,
                        "drift_for": "10s",
                        "scrape_interval": "2s",
                        "evaluation_interval": "2s",
                        "alert_group_wait": "1s",
                        "retrain_cooldown_seconds": 600,
                    },
                }
            )
        )
        urls = {
            "prometheus": f"http://127.0.0.1:{ports['prometheus']}",
            "alertmanager": f"http://127.0.0.1:{ports['alertmanager']}",
            "controller": f"http://127.0.0.1:{ports['controller']}",
            "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
            "serving": f"http://127.0.0.1:{ports['serving_http']}/v2",
        }
        run_cli("up", answers=answers, env=env, timeout=900)
        token = run_cli("secrets", "show", "serving_token", answers=answers).stdout.strip()
        ctx = AppContext.create(load_answers(answers), answers, tmp_path / "state")
        s3 = s3_client(ctx.s3_endpoint, *ctx.s3_credentials("writer"))
        yield Stack(answers, env, urls, token, s3, tmp_path / "state")
    finally:
        run_cli("down", answers=answers, env=env, check=False, timeout=300)


def dataset(stack: Stack, model: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The seeded CSV, read back from the object store: (feature names, features, target)."""
    body = stack.s3.get_object(Bucket="datasets", Key=f"{model}/{model}.csv")["Body"].read()
    frame = pd.read_csv(io.BytesIO(body))
    features = [c for c in frame.columns if c != "target"]
    return features, frame[features].to_numpy(np.float32), frame["target"].to_numpy()


def test_drift_on_each_of_two_models_retrains_promotes_and_reloads_it_alone_without_a_failed_request(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report: dict[str, Any] = {}
    for model in (MODEL_A, MODEL_B):
        stack.cli("data", "seed", "--dataset", model)
    from mlflow.tracking import MlflowClient

    # MLflow's read-only account (what the model server holds) reads the runs' artifacts
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "appliance-reader")
    monkeypatch.setenv(
        "MLFLOW_TRACKING_PASSWORD", (stack.state / "secrets" / "mlflow_reader_password").read_text().strip()
    )
    registry = MlflowClient(stack.urls["mlflow"])
    for model in (MODEL_A, MODEL_B):
        # Each first champion, trained through the CLI against this running stack.
        trained = json.loads(stack.cli("train", "--dataset", model).strip().splitlines()[-1])
        assert trained["promoted"] is True and trained["version"] == "1", trained
        assert trained["metrics"]["accuracy"] >= 0.9 and trained["parity_max_abs_diff"] <= 1e-4, trained
        artifacts = {a.path for a in registry.list_artifacts(trained["run_id"])}
        assert "training_curve.png" in artifacts, artifacts
        report[f"{model}_v1_train"] = {
            "accuracy": trained["metrics"]["accuracy"],
            "seconds": trained["total_seconds"],
        }
    for model in (MODEL_A, MODEL_B):
        wait_for(
            f"the server to load {model} champion v1", lambda m=model: stack.served_version(m) == "1", 120
        )

    rows = {model: dataset(stack, model) for model in (MODEL_A, MODEL_B)}
    traffic = {model: Traffic(stack, model, rows[model][1]).start(threads=1) for model in (MODEL_A, MODEL_B)}
    try:
        # In distribution: both windows fill and Prometheus sees a low PSI for each model.
        for model in (MODEL_A, MODEL_B):
            psi = wait_for(
                f"a full drift window of in-distribution traffic for {model}",
                lambda m=model: stack.full_window_psi(m),
                240,
            )
            assert psi < PSI_THRESHOLD, (model, psi)
            report[f"{model}_psi_in_distribution"] = psi
        # B's loop while A stays in distribution, then A's while B (now on v2) does: each loop is
        # measured, and the other model must come out of it untouched.
        for model, other in ((MODEL_B, MODEL_A), (MODEL_A, MODEL_B)):
            before = _untouched_state(stack, registry, other, traffic[other])
            report[model] = _close_loop(stack, registry, model, rows[model], traffic[model])
            _assert_untouched(stack, registry, other, traffic[other], before, report[model]["loop_s"])
    finally:
        for running in traffic.values():
            running.stop()
    for model, running in traffic.items():
        assert running.failures == [], (model, running.failures[:10])
        assert running.versions["1"] > 0 and running.versions["2"] > 0, (model, running.versions)
        report[model]["requests"] = dict(running.versions)
    # The loop's figures, written before the dashboard check below so a failure there keeps them.
    print(json.dumps(report, indent=1))
    (stack.answers.parent / "e2e-loop.json").write_text(json.dumps(report, indent=1))
    if os.environ.get("APPLIANCE_E2E_REPORT"):
        Path(os.environ["APPLIANCE_E2E_REPORT"]).write_text(json.dumps(report, indent=1))

    # Every metric a dashboard panel queries was scraped from this running stack. The controller's
    # run and promotion counters exist only once the retrain has run, so they reach Prometheus at
    # its next scrape of the controller: wait for that scrape rather than race it.
    wanted_by_board = {
        board.name: {
            n
            for n in dashboard_metric_names(board)
            if not n.startswith((GPU_ONLY, BACKUPS_ONLY, *REPLICAS_ONLY))
        }
        for board in sorted(DASHBOARDS.glob("*.json"))
    }

    def scraped_names() -> set[str]:
        response = httpx.get(
            f"{stack.urls['prometheus']}/api/v1/label/__name__/values",
            auth=stack.web("prometheus"),
            timeout=10,
        )
        return set(response.json()["data"])

    def all_scraped() -> set[str] | None:
        names = scraped_names()
        return names if all(wanted <= names for wanted in wanted_by_board.values()) else None

    try:
        scraped = wait_for("every dashboard metric to be scraped", all_scraped, 30)
    except AssertionError:
        scraped = scraped_names()
    for board_name, wanted in wanted_by_board.items():
        assert wanted <= scraped, f"{board_name}: no such metric scraped: {sorted(wanted - scraped)}"


def _close_loop(
    stack: Stack, registry: Any, model: str, data: tuple[list[str], np.ndarray, np.ndarray], traffic: Traffic
) -> dict[str, Any]:
    """Shift ``model``'s traffic and newest data; follow its loop to v2 served; its figures."""
    names, x, y = data
    shifted = (x + SHIFT_SIGMAS * x.std(axis=0)).astype(np.float32)
    report: dict[str, Any] = {}
    start = time.monotonic()
    traffic.switch(shifted)
    csv = io.StringIO()
    pd.DataFrame(shifted, columns=names).assign(target=y).to_csv(csv, index=False)
    time.sleep(1.1)  # a later LastModified than the seeded file, whatever the clock granularity
    stack.s3.put_object(Bucket="datasets", Key=f"{model}/{model}-shifted.csv", Body=csv.getvalue())

    report["psi_shifted"] = wait_for(
        f"{model}'s PSI above the threshold", lambda: _beyond(stack.max_psi(model), above=True), 120
    )
    firing = wait_for(f"Prometheus to fire a drift alert for {model}", lambda: _firing(stack, model), 180)
    report["alert_firing_s"] = round(time.monotonic() - start, 1)
    routed = wait_for(f"Alertmanager to hold {model}'s drift alert", lambda: _routed(stack, model), 60)
    assert routed["labels"]["model"] == model and firing["labels"]["model"] == model

    run = wait_for(
        f"the controller to start a run from {model}'s alert", lambda: _alert_run(stack, model), 120
    )
    # The run is the model's own, on its own data (its binding), never another model's dataset.
    assert (run["model"], run["params"]["dataset"]) == (model, model), run
    done = wait_for(f"{model}'s retrain run to finish", lambda: _finished(stack, run["id"]), 900, 2)
    assert done["state"] == "succeeded", json.dumps(done, indent=1)[-3000:]
    assert (done["outcome"], done["version"]) == ("promoted", "2"), done
    report["retrain_run_s"] = round(done["finished"] - done["started"], 1)
    report["alert_to_promoted_s"] = round(time.monotonic() - start - report["alert_firing_s"], 1)

    champion = registry.get_model_version_by_alias(model, "champion")
    assert champion.version == "2"
    tags = champion.tags
    assert tags["appliance.dataset"] == model, tags
    challenger_score = float(tags["appliance.challenger_score"])
    champion_score = float(tags["appliance.champion_score"])
    assert challenger_score > champion_score, tags
    report["accuracy_new_test_set"] = {"v1": champion_score, "v2": challenger_score}

    wait_for(f"the server to hot-reload {model} v2", lambda: stack.served_version(model) == "2", 120)
    report["alert_to_served_s"] = round(time.monotonic() - start - report["alert_firing_s"], 1)
    wait_for(f"{model}'s traffic answered by v2", lambda: traffic.versions["2"] > 50, 60)
    report["psi_after_retrain"] = wait_for(
        f"{model}'s PSI back under the threshold",
        lambda: _beyond(stack.full_window_psi(model), above=False),
        180,
    )
    wait_for(f"{model}'s drift alert to resolve", lambda: stack.prom(f'ALERTS{{model="{model}"}}') == [], 60)
    report["loop_s"] = round(time.monotonic() - start, 1)
    return report


def _untouched_state(stack: Stack, registry: Any, model: str, traffic: Traffic) -> dict[str, Any]:
    """What must not change for ``model`` while another model's loop runs."""
    runs = stack.runs(model=model)["runs"]
    return {
        "champion": registry.get_model_version_by_alias(model, "champion").version,
        "served": stack.served_version(model),
        "runs": [r["id"] for r in runs],
        "failures": len(traffic.failures),
        "versions": set(traffic.versions),
    }


def _assert_untouched(
    stack: Stack, registry: Any, model: str, traffic: Traffic, before: dict[str, Any], seconds: float
) -> None:
    """``model``'s champion, served version, runs and traffic as they were; no drift alert for it
    during the other model's loop (``seconds`` long)."""
    after = _untouched_state(stack, registry, model, traffic)
    assert after == before, (model, before, after)
    window = f"{max(1, int(seconds) - 2)}s"  # inside the loop, clear of the previous loop's alert
    assert stack.prom(f'count_over_time(ALERTS{{model="{model}"}}[{window}])') == [], model


def _beyond(psi: float | None, above: bool) -> float | None:
    """``psi`` when it is on the asked side of the alert threshold, else None (keep waiting)."""
    if psi is None or (psi > PSI_THRESHOLD) != above:
        return None
    return psi


def _finished(stack: Stack, run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = stack.runs(f"/{run_id}")
    return None if run["state"] == "running" else run


def _firing(stack: Stack, model: str) -> dict[str, Any] | None:
    reply = httpx.get(f"{stack.urls['prometheus']}/api/v1/alerts", auth=stack.web("prometheus"), timeout=10)
    alerts = reply.json()["data"]["alerts"]
    for alert in alerts:
        drift = alert["labels"].get("alertname") in ("FeatureDrift", "PredictionDrift")
        if drift and alert["state"] == "firing" and alert["labels"].get("model") == model:
            return dict(alert)
    return None


def _routed(stack: Stack, model: str) -> dict[str, Any] | None:
    alerts = httpx.get(
        f"{stack.urls['alertmanager']}/api/v2/alerts", auth=stack.web("alertmanager"), timeout=10
    ).json()
    for alert in alerts:
        drift = alert["labels"].get("alertname") in ("FeatureDrift", "PredictionDrift")
        to_controller = "controller" in [r["name"] for r in alert.get("receivers", [])]
        if drift and to_controller and alert["labels"].get("model") == model:
            return dict(alert)
    return None


def _alert_run(stack: Stack, model: str) -> dict[str, Any] | None:
    runs = stack.runs(model=model)["runs"]
    started = [r for r in runs if r.get("trigger") == "alert"]
    return dict(started[0]) if started else None

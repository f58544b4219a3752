"""The trainer and workbench images, built here and run for real on podman: MLflow and the workbench
from the project's stack file (lab profile, everything else switched off), the workbench's
JupyterLab answering its API only with the token, and a training job in the trainer image on the
stack network that trains with torch, exports ONNX, and registers the model in the stack's MLflow,
whose ONNX file then runs on the host.

One runtime only: these images carry torch (and JupyterLab), and copying them into docker as well
would double the cost for what the lab tests already show on both engines. Build times and sizes
are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.images.catalog import get_image
from appliance.mlflow_auth import WRITER_USER, client_env
from tests.conftest import free_ports, use_runtime
from tests.integration._container_fixtures import ensure_images, health

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.runtime("podman"),
]

RUNTIME = "podman"
SEED = (
    "import os; from appliance.dataconn import DataConnection; from appliance.dataconn.seed import seed; "
    "print(seed(DataConnection.from_env(os.environ), 'breast_cancer'))"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    use_runtime(RUNTIME)
    started = time.monotonic()
    ensure_images(RUNTIME, ("mlflow", "trainer", "workbench"))
    print(f"images ready in {time.monotonic() - started:.0f}s")
    answers = Answers.model_validate(
        {
            "runtime": RUNTIME,
            "profile": "lab",
            "ports": free_ports(),
            "object_store": {"kind": "filesystem"},
            "components": {"monitoring": False, "serving": False, "controller": False},
            "health_timeout_seconds": 300,
        }
    )
    engine = Engine(AppContext.create(answers, None, tmp_path_factory.mktemp("images") / "state"))
    runtime: Any = engine.runtime
    started = time.monotonic()
    try:
        engine.up()
        print(f"mlflow + workbench up in {time.monotonic() - started:.1f}s")
        yield engine
    finally:
        engine.down()
        runtime.purge()


def test_the_workbench_answers_its_api_with_the_token_only(stack: Engine) -> None:
    assert health(stack) == {"mlflow": "healthy", "mlflow-users": "healthy", "workbench": "healthy"}
    url = stack.desired["workbench"].url.removesuffix("/lab")
    token = stack.ctx.secrets.get("jupyter_token")
    status = httpx.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
    assert status.status_code == 200, status.text
    assert "started" in status.json()
    kernels = httpx.get(f"{url}/api/kernelspecs", headers={"Authorization": f"token {token}"}, timeout=30)
    assert "python3" in kernels.json()["kernelspecs"]
    wrong = httpx.get(
        f"{url}/api/status", headers={"Authorization": f"token {secrets.token_hex(8)}"}, timeout=30
    )
    assert wrong.status_code == 403


def test_the_workbench_image_has_the_pipeline_editor_and_the_worked_notebook(stack: Engine) -> None:
    """Elyra is installed in the image (without its pins) and sees the appliance's runtime
    configuration generated at install; the import notebook waits in examples/."""
    url = stack.desired["workbench"].url.removesuffix("/lab")
    auth = {"Authorization": f"token {stack.ctx.secrets.get('jupyter_token')}"}
    runtimes = httpx.get(f"{url}/elyra/metadata/runtimes", headers=auth, timeout=60)
    assert runtimes.status_code == 200, runtimes.text
    assert "appliance" in [r["name"] for r in runtimes.json()["runtimes"]]
    examples = httpx.get(f"{url}/api/contents/examples", headers=auth, timeout=30)
    assert examples.status_code == 200, examples.text
    assert "import_your_model.ipynb" in [item["name"] for item in examples.json()["content"]]


def test_the_trainer_image_trains_exports_onnx_and_registers_in_the_stack(
    stack: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job container in the trainer image, on the stack network with the data connection every
    workload gets (the state volume holds the filesystem store): seed, then the whole lifecycle."""
    runtime: Any = stack.runtime
    kwargs: dict[str, Any] = {
        "image": get_image("trainer").tag(),
        "entrypoint": ["/bin/sh", "-c"],
        "command": [
            f'python -c "{SEED}" && python -m appliance.workloads.trainer run --dataset breast_cancer '
            "--model-name trainer_image --epochs 15"
        ],
        # the data connection and MLflow's writer account, as the stack gives its trainer
        "environment": stack.ctx.connection_env(inside=True) | client_env(stack.ctx, WRITER_USER),
        "volumes": {runtime._volume("state"): {"bind": "/var/lib/appliance", "mode": "rw"}},
        "labels": runtime.labels(),
        "detach": True,
    }
    runtime.attach(kwargs, "trainer-job")
    started = time.monotonic()
    job = runtime.client.containers.create(**kwargs)
    try:
        job.start()
        code = job.wait(timeout=900)
        code = code.get("StatusCode", 1) if isinstance(code, dict) else int(code)
        raw = job.logs(stdout=True, stderr=True)
        logs = (raw if isinstance(raw, bytes) else b"".join(raw)).decode(errors="replace")
    finally:
        job.remove(force=True)
    print(f"trainer job in the trainer image: exit {code} in {time.monotonic() - started:.1f}s")
    assert code == 0, logs[-3000:]
    summary = json.loads(logs.strip().splitlines()[-1])
    assert summary["model_name"] == "trainer_image" and summary["version"] == "1", summary
    assert summary["device"] == "cpu" and summary["parity_max_abs_diff"] < 1e-4, summary
    assert summary["metrics"]["accuracy"] > 0.8, summary["metrics"]

    import mlflow

    from appliance.dataconn.seed import load_frame
    from appliance.workloads.trainer.export import onnx_predict

    for key, value in client_env(stack.ctx, WRITER_USER).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(stack.desired["mlflow"].url)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri="models:/trainer_image/1", dst_path=str(tmp_path))
    )
    frame = load_frame("breast_cancer")
    features = frame.drop(columns=["target"]).to_numpy(dtype=np.float32)[:8]
    output = onnx_predict(local / "model.onnx", features)
    assert output.shape == (8, 2)

"""Training ranks as torchrun starts them, for the DDP tests on the CPU (gloo, tests/unit) and on
GPUs (NCCL, tests/integration): the datasets, the settings, and one rank's run, its result
pickled to ``out/rankN.pkl`` for the test to compare across ranks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from appliance.workloads.trainer import distributed
from appliance.workloads.trainer.errors import TrainerError
from appliance.workloads.trainer.fit import FitConfig, fit, predict
from appliance.workloads.trainer.prepare import Split, split
from appliance.workloads.trainer.schema import validate

CFG = FitConfig(epochs=12, seed=3, patience=4, batch_size=32)


def dataset(kind: str) -> tuple[Split, str, int]:
    """scikit-learn's ``breast_cancer`` (a classifier) or ``diabetes`` (a regressor), split."""
    from sklearn.datasets import load_breast_cancer, load_diabetes

    loader = load_breast_cancer if kind == "breast_cancer" else load_diabetes
    frame = loader(as_frame=True).frame
    spec = validate(frame, kind, task="auto")
    return split(frame, spec, 7), spec.task, spec.n_outputs


def run_rank(rank: int, size: int, port: int, kind: str, out: str) -> None:
    """One rank of ``size`` on this host (torchrun's variables), training ``kind``. A refusal
    (TrainerError) is the rank's result too: its message and fix are pickled instead."""
    os.environ |= {
        "RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    data, task, n_out = dataset(kind)
    try:
        result = fit(data, task, n_out, CFG, lambda row: None, distributed.world())
    except TrainerError as err:
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps({"error": str(err), "fix": err.fix or ""}))
        return
    finally:
        distributed.shutdown()
    output = predict(result.model, task, data.x["test"])
    state = {k: v.cpu().numpy() for k, v in result.model.state_dict().items()}
    Path(out, f"rank{rank}.pkl").write_bytes(
        pickle.dumps(
            {
                "history": result.history,
                "output": output,
                "state": state,
                "backend": result.backend,
                "device": result.device,
            }
        )
    )

"""The trainer on a GPU: one process trains on CUDA what it trains on the CPU, on two datasets (a
classifier and a regressor); NCCL ranks, one per GPU, train what one process trains; and more
ranks on a host than it has GPUs stop before NCCL does, with the fix.

Without a GPU (CI) these skip with the reason; tests/unit/test_trainer_ddp.py covers the choice of
device and backend with mocks and two real gloo processes.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp

from appliance.workloads.trainer import metrics
from appliance.workloads.trainer.fit import fit, predict
from tests._trainer_ranks import CFG, dataset, run_rank
from tests.conftest import free_port

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU visible to torch")


def _on_cpu(_index: int, kind: str, out: str) -> None:
    """One process with the GPUs hidden (CUDA_VISIBLE_DEVICES empty from its start): the CPU's
    result to hold the GPU's to."""
    data, task, n_out = dataset(kind)
    result = fit(data, task, n_out, CFG, lambda row: None)
    scores = metrics.compute(task, data.y["test"], predict(result.model, task, data.x["test"]))
    Path(out, "cpu.pkl").write_bytes(pickle.dumps({"device": result.device, "scores": scores}))


@pytest.mark.parametrize("kind", ["breast_cancer", "diabetes"])
def test_one_process_trains_on_the_gpu_what_it_trains_on_the_cpu(kind: str, tmp_path: Path) -> None:
    data, task, n_out = dataset(kind)
    gpu = fit(data, task, n_out, CFG, lambda row: None)
    assert gpu.device == "cuda"
    assert next(gpu.model.parameters()).device.type == "cuda"
    on_gpu = metrics.compute(task, data.y["test"], predict(gpu.model, task, data.x["test"]))
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):  # set before the child imports torch
        mp.start_processes(_on_cpu, args=(kind, str(tmp_path)), nprocs=1, start_method="spawn")
    cpu = pickle.loads((tmp_path / "cpu.pkl").read_bytes())
    assert cpu["device"] == "cpu"
    print({"kind": kind, "gpu": on_gpu, "cpu": cpu["scores"]})
    if task == "classification":
        assert on_gpu["accuracy"] > 0.85 and abs(on_gpu["accuracy"] - cpu["scores"]["accuracy"]) <= 0.05
        assert abs(on_gpu["auc"] - cpu["scores"]["auc"]) <= 0.03
    else:
        assert (
            on_gpu["r2"] > 0.2 and abs(on_gpu["rmse"] - cpu["scores"]["rmse"]) <= 0.1 * cpu["scores"]["rmse"]
        )


@pytest.mark.skipif(GPUS < 2, reason=f"NCCL between ranks needs two GPUs; {GPUS} here")
def test_nccl_ranks_one_per_gpu_end_with_the_same_weights(tmp_path: Path) -> None:
    import numpy as np

    mp.start_processes(
        run_rank, args=(2, free_port(), "breast_cancer", str(tmp_path)), nprocs=2, start_method="spawn"
    )
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    assert [r.get("backend") for r in ranks] == ["nccl", "nccl"], ranks[0].get("error")
    for key, value in ranks[0]["state"].items():
        assert np.array_equal(value, ranks[1]["state"][key]), key
    data, task, _ = dataset("breast_cancer")
    assert metrics.compute(task, data.y["test"], ranks[0]["output"])["accuracy"] > 0.85


def test_more_ranks_than_gpus_stop_before_nccl_with_the_fix(tmp_path: Path) -> None:
    size = GPUS + 1
    mp.start_processes(
        run_rank, args=(size, free_port(), "breast_cancer", str(tmp_path)), nprocs=size, start_method="spawn"
    )
    for r in range(size):
        got = pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes())
        assert f"{size} processes on this host but {GPUS} GPU(s)" in got.get("error", ""), got
        assert f"--nproc-per-node {GPUS}" in got["fix"]

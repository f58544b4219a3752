"""The trainer across processes: torchrun's environment read and checked, the backend chosen by
device (gloo on CPU, NCCL on GPUs: the GPU path is only chosen here, there is no GPU), the shards
the DistributedSampler would give, and two real gloo processes on loopback training the same
model as one process, on two datasets (a classifier and a regressor)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from appliance.workloads.trainer import distributed, lifecycle, metrics
from appliance.workloads.trainer.distributed import World
from appliance.workloads.trainer.errors import TrainerError
from appliance.workloads.trainer.fit import fit, predict
from appliance.workloads.trainer.workdir import Options
from tests._trainer_ranks import CFG, dataset, run_rank
from tests.conftest import free_port


def test_world_reads_torchruns_environment_and_defaults_to_one_process() -> None:
    assert distributed.world({}) == World(0, 1, 0, 1)
    w = distributed.world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.size, w.local_rank, w.nodes, w.distributed, w.leader) == (3, 4, 1, 2, True, False)


@pytest.mark.parametrize(
    "env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}, {"WORLD_SIZE": "0"}]
)
def test_an_impossible_world_names_torchrun_as_the_fix(env: dict[str, str]) -> None:
    with pytest.raises(TrainerError) as err:
        distributed.world(env)
    assert "torchrun" in (err.value.fix or "")


def test_the_backend_follows_the_device_nccl_on_gpus_gloo_on_cpu() -> None:
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    w = World(rank=3, size=4, local_rank=1, local_size=2)
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert distributed.device_for(w) == torch.device("cpu")
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.device_count", return_value=2),
    ):
        assert distributed.device_for(w) == torch.device("cuda", 1)
        assert distributed.backend_for(distributed.device_for(w)) == "nccl"


def test_more_local_ranks_than_gpus_is_refused_before_nccl_starts() -> None:
    w = World(rank=1, size=2, local_rank=1, local_size=2)
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.device_count", return_value=1),
        pytest.raises(TrainerError, match="2 processes on this host but 1 GPU") as err,
    ):
        distributed.device_for(w)
    assert "--nproc-per-node 1" in (err.value.fix or "")


def test_one_gpu_process_group_is_nccl_bound_to_its_local_gpu() -> None:
    w = World(rank=1, size=2, local_rank=1, local_size=2)
    with (
        mock.patch("torch.cuda.set_device") as set_device,
        mock.patch("torch.distributed.is_initialized", return_value=False),
        mock.patch("torch.distributed.init_process_group") as init,
    ):
        distributed.init(w, torch.device("cuda", 1))
    set_device.assert_called_once_with(torch.device("cuda", 1))
    assert init.call_args.args == ("nccl",)
    assert init.call_args.kwargs["rank"] == 1 and init.call_args.kwargs["world_size"] == 2


@pytest.mark.parametrize(("rows", "size"), [(10, 2), (11, 2), (10, 3), (7, 4)])
def test_each_rank_gets_the_distributed_samplers_rows(rows: int, size: int) -> None:
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    shards = [distributed.shard(order, World(rank=r, size=size, local_size=size)) for r in range(size)]
    for rank, mine in enumerate(shards):
        sampler = DistributedSampler(range(rows), num_replicas=size, rank=rank, shuffle=False)
        assert mine.tolist() == [int(order[i]) for i in sampler]
    assert {int(i) for s in shards for i in s} == set(range(rows))
    assert len({len(s) for s in shards}) == 1  # equal steps per rank, or DDP would wait forever
    assert distributed.rank_batch(32, World(0, size, 0, size)) * size >= 32


def test_a_users_script_is_refused_across_processes() -> None:
    opts = Options(workdir=Path(), dataset="x", script=Path("train.py"))
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    with mock.patch.dict(os.environ, env), pytest.raises(TrainerError, match="--script"):
        lifecycle.run(opts)


@pytest.mark.parametrize("kind", ["breast_cancer", "diabetes"])
def test_two_gloo_processes_train_what_one_process_trains(kind: str, tmp_path: Path) -> None:
    data, task, n_out = dataset(kind)
    one = fit(data, task, n_out, CFG, lambda row: None)
    single = metrics.compute(task, data.y["test"], predict(one.model, task, data.x["test"]))
    # gloo on the CPU also on a GPU machine (tests/integration/test_trainer_cuda.py has NCCL): the
    # ranks start with the GPUs hidden, before they import torch
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):
        mp.start_processes(
            run_rank, args=(2, free_port(), kind, str(tmp_path)), nprocs=2, start_method="spawn"
        )
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    assert ranks[0]["backend"] == "gloo"
    # The ranks end with the same weights and the same epochs (rank 0's early stopping).
    for key, value in ranks[0]["state"].items():
        assert np.array_equal(value, ranks[1]["state"][key]), key
    assert len(ranks[0]["history"]) == len(ranks[1]["history"])
    assert "val_accuracy" in ranks[0]["history"][0] or "val_rmse" in ranks[0]["history"][0]
    both = metrics.compute(task, data.y["test"], ranks[0]["output"])
    print(json.dumps({"kind": kind, "one_process": single, "two_processes": both}))
    if task == "classification":
        assert abs(both["accuracy"] - single["accuracy"]) <= 0.05 and both["accuracy"] > 0.85
        assert abs(both["auc"] - single["auc"]) <= 0.03
    else:
        assert abs(both["rmse"] - single["rmse"]) <= 0.1 * single["rmse"] and both["r2"] > 0.2
    # The same global batches: the first epoch's training loss is close to one process's.
    first_one, first_two = one.history[0]["train_loss"], ranks[0]["history"][0]["train_loss"]
    assert abs(first_one - first_two) <= 0.1 * abs(first_one)

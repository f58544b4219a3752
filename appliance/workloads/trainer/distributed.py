"""Training across processes and hosts: torchrun's environment, the process group, the shards.

``torchrun`` starts one process per slot (``--nnodes`` x ``--nproc-per-node``) and gives each
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the trainer is one process, as before.
Across processes the built-in model trains under DistributedDataParallel: gloo on CPU, NCCL on
GPUs (chosen by the device). Every rank reads the dataset itself through the data connection and
makes the same seeded split; each trains on its shard of the training rows (DistributedSampler's
rule: the epoch's shuffled order, padded to a multiple of the world size, every ``size``-th row
from ``rank``), with ``--batch-size`` the global batch, so that one optimizer step sees the same
rows as one process would. Validation, MLflow and the registry are rank 0's alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

from appliance.workloads.trainer.errors import TrainerError

TIMEOUT_ENV = "APPLIANCE_TRAIN_TIMEOUT_SECONDS"
"""How long a rank waits for the others (joining, or at a collective) before it gives up."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.size // max(1, self.local_size))


def world(env: Mapping[str, str] | None = None) -> World:
    """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``, checked."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    except ValueError as err:
        raise TrainerError(
            f"torchrun's environment is not numbers: {err}",
            fix="start the trainer with torchrun (or unset RANK, WORLD_SIZE and LOCAL_RANK)",
        ) from err
    if size < 1 or not 0 <= rank < size or not 0 <= local_rank < max(1, local_size):
        raise TrainerError(
            f"RANK {rank} / WORLD_SIZE {size} / LOCAL_RANK {local_rank} do not fit together",
            fix="start the trainer with torchrun (or unset RANK, WORLD_SIZE and LOCAL_RANK)",
        )
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size)


def device_for(w: World) -> torch.device:
    """The GPU of this local rank when there are GPUs, else the CPU.

    NCCL needs a GPU of its own for each process (two ranks on one GPU stop in NCCL's set-up with
    "Duplicate GPU detected"), so more local ranks than GPUs is refused here, with the fix."""
    if torch.cuda.is_available():
        if not w.distributed:
            return torch.device("cuda")
        gpus = torch.cuda.device_count()
        if w.local_size > gpus:
            raise TrainerError(
                f"{w.local_size} processes on this host but {gpus} GPU(s): NCCL needs one GPU per process",
                fix=f"start torchrun with --nproc-per-node {gpus} (or hide the GPUs with "
                "CUDA_VISIBLE_DEVICES= to train on the CPU with gloo)",
            )
        return torch.device("cuda", w.local_rank)
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def timeout() -> timedelta:
    return timedelta(seconds=max(30, int(os.environ.get(TIMEOUT_ENV, "900"))))


def init(w: World, device: torch.device) -> None:
    """Join the process group (torchrun's ``MASTER_ADDR``/``MASTER_PORT`` store) once."""
    import torch.distributed as dist

    if not w.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    gpu = device if device.type == "cuda" else None
    dist.init_process_group(
        backend_for(device), rank=w.rank, world_size=w.size, timeout=timeout(), device_id=gpu
    )


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(order: torch.Tensor, w: World) -> torch.Tensor:
    """This rank's rows of the epoch's order (DistributedSampler: padded with the first rows to
    a multiple of the world size, then every ``size``-th from ``rank``)."""
    if not w.distributed:
        return order
    total = math.ceil(len(order) / w.size) * w.size
    if total > len(order):
        order = torch.cat([order, order[: total - len(order)]])
    return order[w.rank : total : w.size]


def rank_batch(batch_size: int, w: World) -> int:
    """Rows per rank per step: the global ``--batch-size`` split over the ranks."""
    return max(1, math.ceil(batch_size / w.size))


def all_sum(values: list[float], w: World, device: torch.device) -> list[float]:
    """Element-wise sums over every rank (the values themselves in one process)."""
    if not w.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def from_leader(values: list[float], w: World, device: torch.device) -> list[float]:
    """Rank 0's values on every rank (the others' are ignored)."""
    if not w.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return [float(v) for v in t.cpu().tolist()]

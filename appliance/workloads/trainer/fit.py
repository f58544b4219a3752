"""The training loop: seeded, deterministic on CPU, early stopping on the validation loss.

Determinism matters beyond reproducibility: a retrain on unchanged data must produce the same
test score, so that champion/challenger compares data, not noise. CUDA is used when present.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from appliance.workloads.trainer import distributed
from appliance.workloads.trainer.distributed import World
from appliance.workloads.trainer.errors import TrainingError
from appliance.workloads.trainer.model import ImageCNN, ServingModel, TabularMLP, as_input
from appliance.workloads.trainer.prepare import Split, scaling


@dataclass
class FitConfig:
    """Hyperparameters of one training run (all logged as MLflow params)."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    patience: int = 10
    seed: int = 42
    model_kind: str = "mlp"
    """``mlp`` (tables) or ``cnn`` (images, see ``images``)."""
    image_shape: tuple[int, ...] = ()
    """[channels, rows, cols] of a ``cnn``'s input."""

    def params(self) -> dict[str, str]:
        return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}


@dataclass
class FitResult:
    """The trained model (best validation epoch) and per-epoch history."""

    model: TabularMLP | ImageCNN
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    device: str = "cpu"
    seconds: float = 0.0
    world_size: int = 1
    backend: str = ""
    """The process group's backend (``gloo``, ``nccl``) across processes; empty in one."""
    rank_batch_size: int = 0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> None:
    """One CPU thread unless ``APPLIANCE_TORCH_THREADS`` says otherwise.

    A small tabular MLP gains nothing from intra-op parallelism, and on a busy host OpenMP threads
    that wait for each other made an epoch two orders of magnitude slower than one thread.
    """
    torch.set_num_threads(max(1, int(os.environ.get("APPLIANCE_TORCH_THREADS", "1"))))


def seed_everything(seed: int, device: torch.device) -> None:
    """Fix every source of randomness; on CPU the run is then bit-for-bit repeatable."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


def predict(
    model: TabularMLP | ImageCNN, task: str, x: np.ndarray, device: torch.device | None = None
) -> np.ndarray:
    """The served output (probabilities or predictions) for raw features ``x`` (rows of the table)."""
    device = device or next(model.parameters()).device
    serving = ServingModel(model, task).eval()
    with torch.no_grad():
        out: np.ndarray = serving(torch.as_tensor(as_input(model, x), device=device)).cpu().numpy()
    return out


def epoch_metric(task: str, y: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """The cheap per-epoch validation metric (sklearn's full set is computed once, at the end)."""
    if task == "classification":
        return {"val_accuracy": float((output.argmax(axis=1) == y).mean())}
    return {"val_rmse": float(np.sqrt(np.mean((output[:, 0] - y) ** 2)))}


def fit(
    data: Split,
    task: str,
    n_outputs: int,
    cfg: FitConfig,
    progress: Callable[[dict[str, float]], None],
    world: World | None = None,
) -> FitResult:
    """Train with Adam; keep the weights of the epoch with the lowest validation loss.

    Across processes (``world``, from torchrun) the model trains under DistributedDataParallel on
    this rank's shard; rank 0 alone validates, reports ``progress`` and decides the best epoch and
    early stopping, which every rank follows (``distributed``)."""
    world = world or World()
    device = distributed.device_for(world) if world.distributed else pick_device()
    configure_threads()
    seed_everything(cfg.seed, device)
    distributed.init(world, device)
    started = time.perf_counter()
    x_mean, x_std = scaling(data.x["train"])
    model: TabularMLP | ImageCNN
    if cfg.model_kind == "cnn":
        model = ImageCNN(cfg.image_shape, n_outputs, dropout=cfg.dropout)  # type: ignore[arg-type]
    else:
        model = TabularMLP(data.x["train"].shape[1], n_outputs, cfg.hidden, cfg.dropout)
    y_train = data.y["train"]
    if task == "regression":
        model.set_scaling(x_mean, x_std, float(y_train.mean()), float(y_train.std() or 1.0))
    else:
        model.set_scaling(x_mean, x_std)
    model.to(device)
    trained: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn: nn.Module = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()

    def target(y: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(y, device=device)
        return t if task == "classification" else ((t - model.y_mean) / model.y_std).unsqueeze(1)

    x_tr, y_tr = torch.as_tensor(as_input(model, data.x["train"]), device=device), target(y_train)
    x_va, y_va = torch.as_tensor(as_input(model, data.x["val"]), device=device), target(data.y["val"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch = distributed.rank_batch(cfg.batch_size, world)
    result = FitResult(model=model, device=device.type, world_size=world.size, rank_batch_size=batch)
    if world.distributed:
        result.backend = distributed.backend_for(device)
    best_loss, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, cfg.epochs + 1):
        trained.train()
        # The same shuffled order on every rank (same seed); each takes its shard of it.
        order = distributed.shard(torch.randperm(len(x_tr), generator=generator), world).to(device)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss = loss_fn(trained(x_tr[idx]), y_tr[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * len(idx)
        total, rows = distributed.all_sum([total, float(len(order))], world, device)
        model.eval()
        val_loss = math.nan
        if world.leader:
            with torch.no_grad():
                val_loss = float(loss_fn(model(x_va), y_va).item())
        (val_loss,) = distributed.from_leader([val_loss], world, device)
        train_loss = total / rows
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingError(
                f"training diverged at epoch {epoch} (loss {train_loss})", fix="lower --lr or check the data"
            )
        row = {"epoch": float(epoch), "train_loss": train_loss, "val_loss": val_loss}
        if world.leader:
            row |= epoch_metric(task, data.y["val"], predict(model, task, data.x["val"], device))
            progress(row)
        result.history.append(row)
        if val_loss < best_loss - 1e-6:
            best_loss, best_state, stale, result.best_epoch = (
                val_loss,
                copy.deepcopy(model.state_dict()),
                0,
                epoch,
            )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result

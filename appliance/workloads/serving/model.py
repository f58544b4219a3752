"""One loaded model version: its ONNX Runtime session, tensor metadata and input checks.

A LoadedModel is immutable once built and warmed up; hot reload builds a new one beside it and
swaps the reference, so requests already holding the old one finish on it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from appliance.workloads.serving.config import PROVIDER_NAMES
from appliance.workloads.serving.drift import DriftMonitor
from appliance.workloads.serving.errors import BadRequest, InferenceError
from appliance.workloads.serving.tensors import NUMPY_TYPES, ORT_TYPES

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
EXECUTION_PROVIDERS: dict[str, tuple[str, ...] | None] = dict(
    zip(
        PROVIDER_NAMES,
        (None, ("CPUExecutionProvider",), ("CUDAExecutionProvider", "CPUExecutionProvider")),
        strict=True,
    )
)
"""What each ``--execution-provider`` name (``config.PROVIDER_NAMES``) runs on: ``auto`` takes the
best one installed (TensorRT, CUDA, CPU); ``cpu`` keeps a model off the GPU (a small model, or a
GPU left to training); ``cuda`` requires the GPU and refuses to start without it instead of
serving slowly on the CPU. CPU stays behind CUDA in its list because ONNX Runtime places the
operators CUDA lacks there."""


CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
"""ONNX Runtime's default, an exhaustive cuDNN search, benchmarks every convolution again for each
new input shape. With dynamic batching each batch size is a new shape, and on an H200 the searches
cost more than the batches: a small CNN served 568 images/s with it, against 5,600 for one
session running single images back to back (benchmarks/README.md, "A 16-core GPU machine").
cuDNN's heuristic picks an algorithm without running any."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, protocol datatype and shape (-1 for a variable dimension) of a model tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class SessionOptions:
    """ONNX Runtime settings shared by every model of a server."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    providers: tuple[str, ...] | None = None  # None: the best available
    required: bool = False
    """The first of ``providers`` must be the one the session runs on (``--execution-provider cuda``)."""

    @classmethod
    def choose(cls, intra: int, inter: int, execution_provider: str) -> SessionOptions:
        """The options for an ``--execution-provider`` name (a key of EXECUTION_PROVIDERS)."""
        providers = EXECUTION_PROVIDERS[execution_provider]
        return cls(intra, inter, providers, required=providers is not None)


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (onnxruntime-gpu[cuda,cudnn], the
    gpu serving image) before the first CUDA session: ONNX Runtime's CUDA provider looks for them
    on the loader's path only, where a virtualenv's wheels are not. Once per process; what it could
    not load it prints (to stderr here: stdout carries the server's ready line)."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        with contextlib.redirect_stdout(sys.stderr):
            preload()


def make_session(path: Path, opts: SessionOptions) -> ort.InferenceSession:
    """An InferenceSession on CUDA/TensorRT when present, CPU otherwise."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = opts.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    wanted = opts.providers or PREFERRED_PROVIDERS
    if opts.required and wanted[0] not in available:
        raise InferenceError(
            f"execution provider {wanted[0]} is not in this ONNX Runtime (it has {', '.join(available)}); "
            "install onnxruntime-gpu and the CUDA and cuDNN libraries it was built for, or serve with "
            "--execution-provider cpu or auto"
        )
    usable = [p for p in wanted if p in available]
    if "CUDAExecutionProvider" in usable:
        preload_cuda_libraries()
    providers = [(p, CUDA_OPTIONS) if p == "CUDAExecutionProvider" else p for p in usable]
    session = ort.InferenceSession(str(path), sess_options=so, providers=providers or None)
    if opts.required and session.get_providers()[0] != wanted[0]:
        # ONNX Runtime falls back to the CPU with a warning when the CUDA libraries do not load
        raise InferenceError(
            f"execution provider {wanted[0]} did not start for {path.name} (ONNX Runtime fell back to "
            f"{session.get_providers()[0]}; its log above says which library failed to load); check "
            "the GPU driver and LD_LIBRARY_PATH, or serve with --execution-provider cpu or auto"
        )
    return session


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, ORT_TYPES.get(arg.type, "BYTES"), shape)


class LoadedModel:
    """A ready-to-serve model version."""

    platform = "onnxruntime_onnx"

    def __init__(
        self,
        name: str,
        version: str,
        source: str,
        onnx_path: Path,
        opts: SessionOptions,
        profile_path: Path | None = None,
        drift_window: int = 1000,
    ) -> None:
        self.name = name
        self.version = version
        self.source = source
        self.session = make_session(onnx_path, opts)
        self.provider = self.session.get_providers()[0]
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.input_by_name = {t.name: t for t in self.inputs}
        self.output_names = [t.name for t in self.outputs]
        self.batchable = all(t.shape and t.shape[0] == -1 for t in self.inputs + self.outputs)
        self.drift = DriftMonitor.from_file(profile_path, drift_window) if profile_path else None
        self.drift_input = self.drift and (self.inputs[0].name if len(self.inputs) == 1 else None)
        self.compute_seconds = 0.0

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

    def check_inputs(self, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> dict[str, np.ndarray]:
        """Match the request's tensors to the model's: names, datatypes, ranks, fixed dims."""
        missing = [n for n in self.input_by_name if n not in arrays]
        unknown = [n for n in arrays if n not in self.input_by_name]
        if unknown:
            raise BadRequest(
                f"model '{self.name}' has no input {', '.join(map(repr, unknown))}; "
                f"its inputs are {', '.join(map(repr, self.input_by_name))}"
            )
        if missing:
            raise BadRequest(f"model '{self.name}' needs input {', '.join(map(repr, missing))}")
        feeds = {}
        for name, array in arrays.items():
            spec = self.input_by_name[name]
            if datatypes[name] != spec.datatype:
                raise BadRequest(
                    f"input '{name}': datatype {datatypes[name]} does not match the model's {spec.datatype}"
                )
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise BadRequest(
                    f"input '{name}': shape {list(array.shape)} does not match the model's {list(spec.shape)}"
                )
            if spec.datatype == "BYTES":  # ONNX strings are UTF-8 text
                try:
                    text = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
                except UnicodeDecodeError:
                    raise BadRequest(
                        f"input '{name}': BYTES elements must be UTF-8 for an ONNX string tensor"
                    ) from None
                array = np.array(text, dtype=object).reshape(array.shape)
            feeds[name] = array
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the session on a (possibly batched) feed; returns every output, in order."""
        outputs: list[np.ndarray] = self.session.run(self.output_names, feeds)
        if self.drift is not None and self.drift_input:
            self.drift.observe(feeds[self.drift_input], outputs[0])
        return outputs

    def batch_costs(self, max_size: int, budget_s: float = 2.0) -> dict[int, float]:
        """Seconds per batch of zeros for sizes 1, 2, 4, ... up to ``max_size`` (and it), on this
        session's provider: the best of a few runs each (the least disturbed by other work), and
        sizes stop once ``budget_s`` is spent. Empty for inputs that zeros cannot stand for."""
        if any(spec.datatype == "BYTES" for spec in self.inputs):
            return {}
        sizes = [1]
        while sizes[-1] * 2 <= max_size:
            sizes.append(sizes[-1] * 2)
        if sizes[-1] != max_size:
            sizes.append(max_size)
        costs: dict[int, float] = {}
        deadline = time.perf_counter() + budget_s
        for size in sizes:
            feeds = {
                spec.name: np.zeros(
                    tuple(size if i == 0 else (1 if d == -1 else d) for i, d in enumerate(spec.shape)),
                    NUMPY_TYPES[spec.datatype],
                )
                for spec in self.inputs
            }
            self.session.run(self.output_names, feeds)  # allocations for this shape
            runs = []
            for _ in range(7):
                start = time.perf_counter()
                self.session.run(self.output_names, feeds)
                runs.append(time.perf_counter() - start)
                if sum(runs) > budget_s / 20 and len(runs) >= 3:
                    break
            costs[size] = min(runs)
            if time.perf_counter() > deadline:
                break
        return costs

    def warm_up(self, rounds: int = 20) -> None:
        """Run a few batches of zeros so the first real request is not slow; time the compute."""
        feeds = {}
        for spec in self.inputs:
            shape = tuple(1 if d == -1 else d for d in spec.shape)
            dtype = NUMPY_TYPES[spec.datatype]
            feeds[spec.name] = (
                np.full(shape, "", dtype=object) if spec.datatype == "BYTES" else np.zeros(shape, dtype)
            )
        for _ in range(5):  # first runs allocate; leave them out of the timing
            self.session.run(self.output_names, feeds)
        start = time.perf_counter()
        for _ in range(rounds):
            self.session.run(self.output_names, feeds)
        self.compute_seconds = (time.perf_counter() - start) / rounds
        log.info(
            "model %s v%s warm on %s: %.1f us per batch of 1",
            self.name,
            self.version,
            self.provider,
            self.compute_seconds * 1e6,
        )

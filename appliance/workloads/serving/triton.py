"""Triton's model configuration and statistics extensions, for Triton's own client tools.

``perf_analyzer`` (and tritonclient's ``get_model_config``/``get_inference_statistics``) ask
for ``/v2/models/NAME/config`` before the first request and for ``/v2/models/stats`` around each
measurement. The configuration is derived from the loaded ONNX model and its batcher; the
statistics are cumulative counts and nanoseconds kept per model version from what the server
measures anyway (request latency, queue wait, batch compute), with Triton's field names so its
tools read them unchanged. Both documents are built once here as plain dicts; REST sends them as
JSON, gRPC copies them into the messages of grpc_predict_v2.proto (same names).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from appliance.workloads.serving.batcher import Batcher
from appliance.workloads.serving.model import LoadedModel

# the server's datatype names -> Triton's model_config.proto DataType
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}
DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


def model_config(model: LoadedModel, batcher: Batcher) -> dict[str, Any]:
    """The model's configuration as Triton reports it (``max_batch_size`` 0: not batchable, and
    the dims are then the full shapes; otherwise the dims leave out the batch dimension)."""
    batched = model.batchable
    config: dict[str, Any] = {
        "name": model.name,
        "platform": model.platform,
        "backend": "onnxruntime",
        "max_batch_size": batcher.max_batch_size if batched else 0,
        "input": [
            {
                "name": t.name,
                "data_type": TRITON_TYPES.get(t.datatype, "TYPE_INVALID"),
                "dims": list(t.shape[1:] if batched else t.shape),
            }
            for t in model.inputs
        ],
        "output": [
            {
                "name": t.name,
                "data_type": TRITON_TYPES.get(t.datatype, "TYPE_INVALID"),
                "dims": list(t.shape[1:] if batched else t.shape),
            }
            for t in model.outputs
        ],
    }
    if batched and batcher.max_rows > 1:  # batching measured worth it (batcher.py), this far
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batcher.delay * 1e6),
            "preferred_batch_size": [batcher.max_rows],
        }
    return config


@dataclass
class Duration:
    """A StatisticDuration: how many, and their total time in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9) * count

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Cumulative statistics of one model version (updated on the event-loop thread only).

    Per request: ``success``/``fail`` (whole time in the server), ``queue`` (wait for its batch),
    ``compute_input`` (decoding and checking the inputs), ``compute_infer`` (the ONNX Runtime
    call of its batch, as Triton counts it: each request of a batch gets the batch's time),
    ``compute_output`` (selecting and encoding the outputs). Per execution: the batch size.
    ``inference_count`` counts rows (Triton's inferences), ``execution_count`` model runs.
    Times of a batch are added when it runs, counts when its requests finish.
    """

    name: str
    version: str
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    durations: dict[str, Duration] = field(default_factory=lambda: {k: Duration() for k in DURATIONS})
    batches: dict[int, Duration] = field(default_factory=dict)

    def request(self, ok: bool, total_s: float, input_s: float | None, output_s: float | None) -> None:
        """A request finished. Its per-phase counts move here, together, so that a snapshot
        taken while requests are in flight has equal counts (perf_analyzer checks this)."""
        d = self.durations
        d["success" if ok else "fail"].add(total_s)
        if ok:
            for phase, seconds in (("compute_input", input_s), ("compute_output", output_s)):
                d[phase].add(seconds or 0.0)
            d["queue"].count += 1
            d["compute_infer"].count += 1
        self.last_inference_ms = int(time.time() * 1000)

    def execution(self, rows: int, compute_s: float, waits: list[float]) -> None:
        """A batch ran: its time goes to each of its requests (counted when they finish)."""
        self.execution_count += 1
        self.inference_count += rows
        self.durations["compute_infer"].ns += int(compute_s * 1e9) * len(waits)
        self.durations["queue"].ns += int(sum(waits) * 1e9)
        self.batches.setdefault(rows, Duration()).add(compute_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: v.as_dict() for k, v in self.durations.items()},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batches.items())
            ],
        }

"""Dynamic batching: requests that arrive together run as one ONNX Runtime call.

Requests queue per model version. A batch is cut when ``max_batch_size`` rows are waiting, or
``max_queue_delay`` after the first one arrived (0: at the end of the current event-loop turn, so
everything that arrived in the same socket reads is batched without adding latency). Requests
join a batch only when their feeds agree on names, dtypes and non-batch dimensions.

How far to batch is measured per model version when its batcher is built (at load time, on the
session's own provider, CPU or CUDA): the cost of batches of 1, 2, 4, ... rows, and the batch grows
only while each doubling still cuts the cost per row by ``MIN_GAIN``. A small model, whose cost is
mostly fixed per call, keeps batching to ``max_batch_size``; a compute-bound one, whose cost per
row stays flat or grows with the batch (a CNN on a CPU: more cache misses), stops at 1 or 2, since
a batch would only make its first request wait for the others. ``max_batch_size`` stays the bound.

Small models on the CPU (a warm-up batch under ``INLINE_COMPUTE_S``) run inline on the event
loop: a thread hop costs more than their compute. Larger ones, and every model on a GPU, run in a
worker thread, one batch at a time per model, so that new requests pile up and form the next,
larger batch while one computes. On a GPU a short warm-up batch is mostly waiting for the device
(a small CNN's 140 us on an H200, 7.6 us a row in batches of 32): inline, the event loop would
sit through every wait, and batches would never form while the device works.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from appliance.workloads.serving.model import LoadedModel

log = logging.getLogger(__name__)
INLINE_COMPUTE_S = 0.0005
MIN_GAIN = 0.10
"""A doubling of the batch must cut the cost per row by at least this fraction to be worth it."""

Pending = tuple[dict[str, np.ndarray], int, "asyncio.Future[list[np.ndarray]]", float]


class Batcher:
    """Queue and executor of one model version."""

    def __init__(
        self,
        model: LoadedModel,
        max_batch_size: int,
        max_queue_delay_s: float,
        executor: ThreadPoolExecutor,
        on_batch: Callable[[LoadedModel, int, float, list[float]], None] | None = None,
    ) -> None:
        self.model = model
        self.max_rows = max(1, max_batch_size) if model.batchable else 1
        self.max_batch_size = self.max_rows
        """The configured bound (what Triton's config calls max_batch_size: the largest request
        a client may send); ``max_rows`` is how far requests are batched together."""
        self.costs: dict[int, float] = {}
        if self.max_rows > 1:
            self.costs = model.batch_costs(self.max_rows)
            if self.costs:
                self.max_rows = batch_limit(self.costs)
                log.info(
                    "model %s v%s batches up to %d rows (cost per row by batch size: %s)",
                    model.name,
                    model.version,
                    self.max_rows,
                    ", ".join(f"{b}: {c / b * 1e6:.1f} us" for b, c in sorted(self.costs.items())),
                )
        self.delay = max_queue_delay_s
        self.executor = executor
        self.on_batch = on_batch
        self.inline = model.provider == "CPUExecutionProvider" and model.compute_seconds < INLINE_COMPUTE_S
        self._pending: list[Pending] = []
        self._rows = 0
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._busy = False

    def submit(self, feeds: dict[str, np.ndarray]) -> asyncio.Future[list[np.ndarray]]:
        """Queue one request's feeds; the future gets that request's outputs."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[np.ndarray]] = loop.create_future()
        rows = next(iter(feeds.values())).shape[0] if self.model.batchable and feeds else 1
        self._pending.append((feeds, rows, fut, time.perf_counter()))
        self._rows += rows
        if self._busy:
            return fut  # the running batch's completion cuts the next one
        if self._rows >= self.max_rows:
            if self._scheduled is not None:
                self._scheduled.cancel()
            self._scheduled = loop.call_soon(self._cut)
        elif self._scheduled is None:
            self._scheduled = (
                loop.call_later(self.delay, self._cut) if self.delay > 0 else loop.call_soon(self._cut)
            )
        return fut

    def _take(self) -> list[Pending]:
        """The requests of the next batch: same signature as the first, up to max_rows."""
        first = self._pending[0]
        sig = _signature(first[0])
        batch: list[Pending] = []
        rest: list[Pending] = []
        rows = 0
        for item in self._pending:
            if not batch or (rows + item[1] <= self.max_rows and _signature(item[0]) == sig):
                batch.append(item)
                rows += item[1]
            else:
                rest.append(item)
        self._pending = rest
        self._rows -= rows
        return batch

    def _cut(self) -> None:
        self._scheduled = None
        while self._pending and not self._busy:
            batch = self._take()
            if self.inline:
                self._finish(batch, *_execute(self.model, batch))
            else:
                self._busy = True
                loop = asyncio.get_running_loop()
                task = loop.run_in_executor(self.executor, _execute, self.model, batch)
                task.add_done_callback(lambda t, b=batch: self._done(b, t))  # type: ignore[misc]

    def _done(self, batch: list[Pending], task: asyncio.Future[Any]) -> None:
        self._busy = False
        try:
            self._finish(batch, *task.result())
        except Exception as err:  # the executor itself failed: fail the batch, keep serving
            for item in batch:
                if not item[2].done():
                    item[2].set_exception(err)
        if self._pending and self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._cut)

    def _finish(
        self, batch: list[Pending], outputs: list[np.ndarray] | Exception, started: float, ended: float
    ) -> None:
        if self.on_batch is not None:
            self.on_batch(
                self.model, sum(b[1] for b in batch), ended - started, [started - b[3] for b in batch]
            )
        if isinstance(outputs, Exception):
            for item in batch:
                if not item[2].done():
                    item[2].set_exception(outputs)
            return
        if len(batch) == 1:
            if not batch[0][2].done():
                batch[0][2].set_result(outputs)
            return
        offset = 0
        for _feeds, rows, fut, _t in batch:
            if not fut.done():
                fut.set_result([o[offset : offset + rows] for o in outputs])
            offset += rows


def batch_limit(costs: dict[int, float], min_gain: float = MIN_GAIN) -> int:
    """The largest batch size up to which every step (1 -> 2 -> 4 ...) cut the cost per row by at
    least ``min_gain``; ``costs`` maps batch sizes to seconds per batch."""
    sizes = sorted(costs)
    best = sizes[0]
    for prev, size in itertools.pairwise(sizes):
        per_row, before = costs[size] / size, costs[prev] / prev
        # a last step shorter than a doubling (32 after 16 is one, 24 after 16 is not) needs
        # only its share of the gain
        need = 1 - min_gain * min(1.0, (size / prev - 1))
        if per_row > before * need:
            break
        best = size
    return best


def _signature(feeds: dict[str, np.ndarray]) -> tuple[Any, ...]:
    return tuple((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items())


def _execute(model: LoadedModel, batch: list[Pending]) -> tuple[list[np.ndarray] | Exception, float, float]:
    """Run one batch; returns (outputs or the error, start, end)."""
    started = time.perf_counter()
    try:
        if len(batch) == 1:
            feeds = batch[0][0]
        else:
            feeds = {k: np.concatenate([b[0][k] for b in batch]) for k in batch[0][0]}
        outputs: list[np.ndarray] | Exception = model.run(feeds)
    except Exception as err:
        outputs = err
    return outputs, started, time.perf_counter()

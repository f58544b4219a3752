"""Dynamic batching on a real ONNX Runtime session (in-process, no server started)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from appliance.workloads.serving.batcher import Batcher
from appliance.workloads.serving.model import LoadedModel, SessionOptions


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    node = helper.make_node("Mul", ["x", "two"], ["y"])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [node],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [two],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        tmp_path / "m.onnx",
    )
    m = LoadedModel("double", "1", "test", tmp_path / "m.onnx", SessionOptions())
    m.warm_up(2)
    return m


@pytest.mark.parametrize("inline", [True, False])
def test_concurrent_requests_share_batches_and_get_their_own_rows(model: LoadedModel, inline: bool) -> None:
    sizes: list[int] = []

    async def main() -> list[list[np.ndarray]]:
        with ThreadPoolExecutor(2) as pool:
            b = Batcher(model, 8, 0.0, pool, on_batch=lambda m, rows, c, waits: sizes.append(rows))
            b.inline = inline
            feeds = [{"x": np.full((1 + i % 3, 2), float(i), np.float32)} for i in range(20)]
            outs = await asyncio.gather(*(b.submit(f) for f in feeds))
            for f, o in zip(feeds, outs, strict=True):
                np.testing.assert_array_equal(o[0], f["x"] * 2)
            return outs

    asyncio.run(main())
    assert sum(sizes) == sum(1 + i % 3 for i in range(20))
    assert max(sizes) <= 8 and len(sizes) < 20  # batched, never over the limit


def test_queue_delay_collects_late_arrivals(model: LoadedModel) -> None:
    sizes: list[int] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(model, 64, 0.5, pool, on_batch=lambda m, rows, c, waits: sizes.append(rows))
            first = b.submit({"x": np.ones((1, 2), np.float32)})
            await asyncio.sleep(0.01)
            second = b.submit({"x": np.ones((1, 2), np.float32)})
            await asyncio.gather(first, second)

    asyncio.run(main())
    assert sizes == [2]


def test_mismatched_shapes_run_in_separate_batches(model: LoadedModel) -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(model, 64, 0.0, pool)
            ok = b.submit({"x": np.ones((1, 2), np.float32)})
            bad = b.submit({"x": np.ones((1, 3), np.float32)})  # fails in ORT, alone
            assert (await ok)[0].shape == (1, 2)
            with pytest.raises(Exception, match=r"dimension|shape|Got invalid"):
                await bad

    asyncio.run(main())

"""Dynamic batching on a real ONNX Runtime session (in-process, no server started)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from appliance.workloads.serving.batcher import Batcher, batch_limit
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


def test_only_short_cpu_batches_run_on_the_event_loop(model: LoadedModel) -> None:
    with ThreadPoolExecutor(1) as pool:
        assert model.provider == "CPUExecutionProvider" and Batcher(model, 8, 0.0, pool).inline
        model.provider = "CUDAExecutionProvider"  # the same short batch, waited for on a GPU
        assert not Batcher(model, 8, 0.0, pool).inline
        model.provider = "CPUExecutionProvider"
        model.compute_seconds = 0.002  # a compute-bound model on the CPU
        assert not Batcher(model, 8, 0.0, pool).inline


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


# --- how far to batch: measured per model -----------------------------------------------------


def curve(per_row_us: dict[int, float]) -> dict[int, float]:
    """Seconds per batch from a cost per row (microseconds) by batch size."""
    return {b: us * b / 1e6 for b, us in per_row_us.items()}


@pytest.mark.parametrize(
    ("per_row", "limit"),
    [
        ({1: 6.5, 2: 3.3, 4: 1.7, 8: 0.9, 16: 0.5, 32: 0.4}, 32),  # fixed cost per call: batch all
        ({1: 210, 2: 205, 4: 203, 8: 202, 16: 1090, 32: 1120}, 1),  # compute-bound: no gain
        ({1: 590, 2: 600, 4: 640, 8: 678}, 1),  # dearer per row in a batch
        ({1: 100, 2: 60, 4: 40, 8: 38, 16: 37, 32: 36}, 4),  # pays until 4, then flattens
        ({1: 10, 2: 6, 4: 4, 8: 2.5, 16: 2.3}, 8),  # 8 -> 16 gains 8 %: not enough
        ({1: 10, 2: 5, 4: 2.5, 8: 1.2, 12: 1.0}, 12),  # a last step of half a doubling, 17 % gain
        ({1: 10, 2: 12, 4: 2}, 1),  # a step that does not pay ends the search
        ({1: 5.0}, 1),
    ],
)
def test_batch_limit_keeps_the_sizes_that_cut_the_cost_per_row(per_row: dict[int, float], limit: int) -> None:
    assert batch_limit(curve(per_row)) == limit


def test_measured_limits_a_cnn_to_small_batches_and_lets_an_mlp_batch(tmp_path: Path) -> None:
    """Real sessions: the benchmark's CNN (compute-bound) and MLP (overhead-bound)."""
    from appliance.workloads.serving.triton import model_config
    from benchmarks.serving.bench_model import build_cnn, build_model

    limits = {}
    with ThreadPoolExecutor(1) as pool:
        for name, build in (("cnn", build_cnn), ("mlp", build_model)):
            m = LoadedModel(name, "1", "test", build(tmp_path / name), SessionOptions())
            m.warm_up(3)
            batcher = Batcher(m, 32, 0.0, pool)
            assert set(batcher.costs) == {1, 2, 4, 8, 16, 32}
            limits[name] = batcher.max_rows
            config = model_config(m, batcher)
            assert config["max_batch_size"] == 32  # what a client may send is unchanged
            if batcher.max_rows > 1:
                assert config["dynamic_batching"]["preferred_batch_size"] == [batcher.max_rows]
            else:
                assert "dynamic_batching" not in config
    assert limits["cnn"] <= 2, limits
    assert limits["mlp"] >= 8, limits


def test_the_configured_maximum_still_bounds_the_batch(model: LoadedModel) -> None:
    with ThreadPoolExecutor(1) as pool:
        assert Batcher(model, 3, 0.0, pool).max_rows <= 3
        assert Batcher(model, 1, 0.0, pool).costs == {}  # nothing to measure: no batching asked

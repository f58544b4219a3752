"""Where the model server runs its models: ``--execution-provider`` from the ``gpu`` answers, and
the sessions it asks ONNX Runtime for (CUDA with cuDNN's heuristic, refused when required and
absent or fallen back to the CPU). ONNX Runtime is mocked here: CI has no GPU
(tests/integration/test_serving_cuda.py runs the real one where there is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from appliance.answers import Answers
from appliance.cli.serve_cmd import serve_cmd
from appliance.context import AppContext
from appliance.render import render_stack
from appliance.workloads.serving import model
from appliance.workloads.serving.errors import InferenceError
from appliance.workloads.serving.model import CUDA_OPTIONS, SessionOptions, make_session


@pytest.mark.parametrize(
    ("gpu", "provider"),
    [
        ({}, "auto"),
        ({"mode": "on"}, "cuda"),
        ({"mode": "off"}, "cpu"),
        ({"mode": "on", "services": ["trainer"]}, "cpu"),
    ],
)
def test_the_gpu_answers_choose_the_model_servers_provider(
    gpu: dict[str, Any], provider: str, tmp_path: Path
) -> None:
    data = {"profile": "edge", "object_store": {"kind": "filesystem"}, "serving": {"model": "/m"}, "gpu": gpu}
    command = render_stack(AppContext(Answers.model_validate(data), tmp_path / "state"))["serving"].command
    at = command.index("--execution-provider")
    assert command[at + 1] == provider and at > command.index("--")  # the model server's flag
    params = serve_cmd.make_context("serve", ["--model", "/m", *command[at : at + 2]]).params
    assert params["execution_provider"] == provider


def test_an_unknown_provider_is_refused_with_the_choices() -> None:
    with pytest.raises(Exception, match="'tpu' is not one of 'auto', 'cpu', 'cuda'"):
        serve_cmd.make_context("serve", ["--model", "/m", "--execution-provider", "tpu"])


class FakeSession:
    """Records what ONNX Runtime was asked for and answers with ``running`` as its providers."""

    asked: list[Any] = []
    running = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    preloaded = False

    def __init__(self, path: str, sess_options: Any, providers: Any) -> None:
        FakeSession.asked = providers

    def get_providers(self) -> list[str]:
        return FakeSession.running


def _session(available: list[str], running: list[str], opts: SessionOptions) -> Any:
    FakeSession.running = running
    with (
        mock.patch.object(model.ort, "get_available_providers", return_value=available),
        mock.patch.object(model.ort, "InferenceSession", FakeSession),
        mock.patch.object(model, "preload_cuda_libraries") as preload,
    ):
        session = make_session(Path("/m/model.onnx"), opts)
    FakeSession.preloaded = preload.called
    return session


GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_sessions_use_cudnns_heuristic_not_a_search_per_batch_size() -> None:
    _session(GPU, ["CUDAExecutionProvider", "CPUExecutionProvider"], SessionOptions.choose(1, 1, "cuda"))
    assert FakeSession.asked == [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    assert FakeSession.preloaded  # the nvidia-* wheels' libraries, before the first CUDA session
    assert CUDA_OPTIONS["cudnn_conv_algo_search"] == "HEURISTIC"
    _session(GPU, ["TensorrtExecutionProvider"], SessionOptions.choose(1, 1, "auto"))
    assert FakeSession.asked == [
        "TensorrtExecutionProvider",
        ("CUDAExecutionProvider", CUDA_OPTIONS),
        "CPUExecutionProvider",
    ]
    _session(GPU, ["CPUExecutionProvider"], SessionOptions.choose(1, 1, "cpu"))
    assert FakeSession.asked == ["CPUExecutionProvider"] and not FakeSession.preloaded


def test_the_cuda_libraries_are_preloaded_once_and_quietly_for_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model.preload_cuda_libraries.cache_clear()
    with mock.patch.object(
        model.ort, "preload_dlls", create=True, side_effect=lambda: print("Failed to load x")
    ) as pre:
        model.preload_cuda_libraries()
        model.preload_cuda_libraries()
    assert pre.call_count == 1
    out = capsys.readouterr()
    assert out.out == "" and "Failed to load x" in out.err  # stdout carries the ready line
    model.preload_cuda_libraries.cache_clear()


def test_required_cuda_is_refused_when_absent_or_fallen_back_to_the_cpu() -> None:
    with pytest.raises(InferenceError, match="not in this ONNX Runtime") as err:
        _session(["CPUExecutionProvider"], ["CPUExecutionProvider"], SessionOptions.choose(1, 1, "cuda"))
    assert "--execution-provider cpu or auto" in err.value.message
    with pytest.raises(InferenceError, match=r"did not start for model\.onnx") as err:
        _session(GPU, ["CPUExecutionProvider"], SessionOptions.choose(1, 1, "cuda"))
    assert "fell back to CPUExecutionProvider" in err.value.message
    # auto takes what it gets: the CPU on a machine without a GPU is no error
    _session(["CPUExecutionProvider"], ["CPUExecutionProvider"], SessionOptions.choose(1, 1, "auto"))
    assert FakeSession.asked == ["CPUExecutionProvider"]

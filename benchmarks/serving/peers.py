"""The peer servers of the benchmark: their virtualenvs and how to start each one.

Each peer lives in its own virtualenv under benchmarks/.venvs/ (one shared venv makes pip fall
back to ancient releases) and serves the same model.onnx with ONNX Runtime and the same session
options (1 intra-op and 1 inter-op thread) through the peer's own custom-model API:

- Seldon MLServer 1.7: a custom MLModel runtime (uvloop pinned below 0.22: newer crashes it);
  ``parallel_workers: 0`` keeps inference in the server process (its fastest setting here).
- KServe 0.21 Python ModelServer: a custom ``kserve.Model`` (it must set a response id).
- NVIDIA PyTriton 0.7: Triton's server binary with the Python backend, dynamic batching on;
  the Python stub needs LD_LIBRARY_PATH pointing at the base interpreter's lib folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"

PACKAGES = {
    "mlserver": ["mlserver==1.7.*", "uvloop<0.22", "onnxruntime", "numpy"],
    "kserve": ["kserve==0.21.*", "onnxruntime", "numpy"],
    "pytriton": ["nvidia-pytriton==0.7.*", "onnxruntime", "numpy"],
}


@dataclass
class Peer:
    name: str
    cmd: list[str]
    env: dict[str, str]
    http_port: int
    grpc_port: int
    model_name: str
    cwd: Path


def python_of(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def ensure_venv(peer: str, log: Path) -> Path:
    """Create the peer's virtualenv and install it (once; reused on later runs)."""
    py = python_of(peer)
    marker = VENVS / peer / ".installed"
    if marker.exists():
        return py
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(VENVS / peer)], check=True, stdout=out, stderr=out
        )
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, stdout=out, stderr=out
        )
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *PACKAGES[peer]], check=True, stdout=out, stderr=out
        )
    marker.write_text("ok\n")
    return py


MLSERVER_RUNTIME = """
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(self.settings.parameters.uri, so, providers=["CPUExecutionProvider"])
        self.out = self.sess.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        y = self.sess.run([self.out], {"input": x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(self.out, y)])
"""

KSERVE_SERVER = """
import sys
import numpy as np
import onnxruntime as ort
import kserve
from kserve import InferRequest, InferResponse, InferOutput, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.out = self.sess.get_outputs()[0].name
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32)
        y = self.sess.run([self.out], {"input": x})[0]
        out = InferOutput(name=self.out, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(response_id=payload.id or "0", model_name=self.name, infer_outputs=[out])


if __name__ == "__main__":
    path, http_port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.argv = [sys.argv[0], "--http_port", str(http_port), "--grpc_port", str(grpc_port), "--workers", "1"]
    model = OnnxModel("mlp", path)
    model.load()
    ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1).start([model])
"""

PYTRITON_SERVER = """
import sys
import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

path, http_port, grpc_port, metrics_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
n_out = sess.get_outputs()[0].shape[1]
in_shape = tuple(sess.get_inputs()[0].shape[1:])  # (30,) for the MLP, (3, 64, 64) for the CNN


@batch
def infer(input):
    return {"probabilities": sess.run(["probabilities"], {"input": input.astype(np.float32)})[0]}


config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                      grpc_port=grpc_port, metrics_port=metrics_port)
with Triton(config=config) as triton:
    triton.bind(model_name="mlp", infer_func=infer,
                inputs=[Tensor(name="input", dtype=np.float32, shape=in_shape)],
                outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(n_out,))],
                config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=0)))
    triton.serve()
"""


def mlserver(work: Path, model: Path, ports: list[int]) -> Peer:
    import json

    folder = work / "mlserver"
    (folder / "mlp").mkdir(parents=True, exist_ok=True)
    (folder / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
    settings = {
        "http_port": ports[0],
        "grpc_port": ports[1],
        "metrics_port": ports[2],
        "host": "127.0.0.1",
        "parallel_workers": 0,
        "debug": False,
        "metrics_endpoint": None,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "mlp",
        "implementation": "onnx_runtime.OnnxRuntime",
        "parameters": {"uri": str(model)},
    }
    (folder / "mlp" / "model-settings.json").write_text(json.dumps(model_settings))
    cli = VENVS / "mlserver" / "bin" / "mlserver"
    return Peer("mlserver", [str(cli), "start", str(folder)], {}, ports[0], ports[1], "mlp", folder)


def kserve(work: Path, model: Path, ports: list[int]) -> Peer:
    folder = work / "kserve"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.py").write_text(KSERVE_SERVER)
    cmd = [str(python_of("kserve")), str(folder / "server.py"), str(model), str(ports[0]), str(ports[1])]
    return Peer("kserve", cmd, {}, ports[0], ports[1], "mlp", folder)


def pytriton(work: Path, model: Path, ports: list[int]) -> Peer:
    folder = work / "pytriton"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.py").write_text(PYTRITON_SERVER)
    base = subprocess.run(
        [str(python_of("pytriton")), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {"LD_LIBRARY_PATH": f"{base}/lib:" + os.environ.get("LD_LIBRARY_PATH", "")}
    cmd = [str(python_of("pytriton")), str(folder / "server.py"), str(model), *map(str, ports[:3])]
    return Peer("pytriton", cmd, env, ports[0], ports[1], "mlp", folder)


BUILDERS = {"mlserver": mlserver, "kserve": kserve, "pytriton": pytriton}

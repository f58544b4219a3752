"""Contracts with the rest of the appliance: metric names/labels of docs/interfaces.md, and the
committed gRPC stubs being what the committed proto generates."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from appliance.workloads.serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "appliance" / "workloads" / "serving" / "proto_gen"


def documented_metrics() -> dict[str, set[str]]:
    """metric -> labels, from the 'Model server' table of docs/interfaces.md."""
    text = (ROOT / "docs" / "interfaces.md").read_text()
    section = text.split("Model server", 1)[1].split("Controller", 1)[0]
    out = {}
    for name, labels in re.findall(r"^\| `(appliance_\w+)` \| [^|]+\| ([^|]+)\|", section, re.M):
        out[name] = {re.sub(r"\s*\(.*", "", label).strip() for label in labels.split(",")}
    return out


class _Drift:
    def snapshot(self) -> tuple[dict[str, float], float, int]:
        return {"f0": 0.1}, 0.2, 10


class _Model:
    name, version, source, drift = "m", "1", "/x", _Drift()


def test_every_documented_metric_is_exported_with_its_labels() -> None:
    metrics = ServingMetrics(lambda: [_Model()])
    m = metrics
    m.child(m.requests, "m", "1", "rest", "success").inc()
    m.child(m.duration, "m", "rest").observe(0.001)
    m.child(m.queue, "m").observe(0.001)
    m.child(m.compute, "m").observe(0.001)
    m.child(m.batch, "m").observe(4)
    m.child(m.in_flight, "rest").inc()
    text = generate_latest(metrics.registry).decode()
    documented = documented_metrics()
    assert len(documented) == 10
    for name, labels in documented.items():
        lines = [line for line in text.splitlines() if re.match(rf"{name}(_bucket)?{{", line)]
        assert lines, f"{name} not exported"
        found = set(re.findall(r'(\w+)="', lines[0])) - {"le"}
        assert found == labels, (name, found, labels)


GRPC_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '([^']*)'$", re.MULTILINE)
"""The grpcio release that generated the _grpc stub: the oldest grpcio it imports under."""
PROTOBUF_STAMP = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)
"""The protobuf release that generated the _pb2 module: the oldest protobuf it imports under."""
GENERATOR_STAMPS = (
    GRPC_STAMP,
    PROTOBUF_STAMP,
    re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)"),  # the same protobuf release, as numbers
)
"""Where the generator writes its own version (grpcio-tools' release, its protoc's): a newer
grpcio-tools gives the same code with other stamps (1.85.1 and 1.85.4 did)."""


def without_generator_stamps(text: str) -> str:
    for stamp in GENERATOR_STAMPS:
        text = stamp.sub("<the generator's version>", text)
    return text


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """The code the committed proto generates, whichever grpcio-tools this machine has; the
    committed stubs' version stamps are checked against the declared floors below."""
    from grpc_tools import protoc

    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(PROTO_DIR / "grpc_predict_v2.proto"),
        ]
    )
    assert rc == 0
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py"):
        generated = (
            (tmp_path / name)
            .read_text()
            .replace("import grpc_predict_v2_pb2 as", "from . import grpc_predict_v2_pb2 as")
        )
        committed = (PROTO_DIR / name).read_text()
        assert without_generator_stamps(generated) == without_generator_stamps(committed), (
            f"{name} is stale: regenerate (see the .proto header)"
        )


def test_the_stubs_import_wherever_the_declared_floors_hold() -> None:
    """The stubs refuse to import under a grpcio or protobuf older than the one that generated
    them: the serving extra's floors (pyproject.toml) must be at least their stamps, so that every
    environment it allows (a host's wheelhouse, an image) can serve gRPC."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["optional-dependencies"]["serving"]:
        requirement = Requirement(line)
        floors[requirement.name] = min(
            (Version(spec.version) for spec in requirement.specifier if spec.operator == ">="), default=None
        )
    grpc_stub = (PROTO_DIR / "grpc_predict_v2_pb2_grpc.py").read_text()
    pb2 = (PROTO_DIR / "grpc_predict_v2_pb2.py").read_text()
    stamps = {"grpcio": GRPC_STAMP.findall(grpc_stub), "protobuf": PROTOBUF_STAMP.findall(pb2)}
    assert all(len(found) == 1 for found in stamps.values()), stamps
    for name, (stamp,) in stamps.items():
        floor = floors.get(name)
        assert floor is not None and floor >= Version(stamp), (
            f"the {name} floor {floor} is below the stubs' {stamp}"
        )

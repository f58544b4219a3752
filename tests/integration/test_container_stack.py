"""A small stack (node exporter, Prometheus, MLflow) as real containers, on podman and on docker:
up to healthy, a zero-action plan, DNS between services, a killed container restarted by its
restart policy, and a down that removes every container and network of the stack and touches
nothing else. The same tests run on both runtimes (skipped only where an engine is absent)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.engine import Engine
from appliance.runtimes.containers_common import ContainerRuntime
from tests.conftest import runtime_params, use_runtime
from tests.integration._container_fixtures import (
    RUNTIMES,
    assert_down_left_only_volumes,
    bystander,
    container_engine,
    ensure_images,
    health,
    kill_and_wait_for_restart,
    owned,
)

# The first test may build the images (base, wheelhouse, mlflow): ~12 min on a fresh 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module", params=runtime_params(*RUNTIMES))
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    name = str(request.param)
    use_runtime(name)
    ensure_images(name)
    engine = container_engine(name, tmp_path_factory.mktemp(name))
    runtime: Any = engine.runtime
    started = time.monotonic()
    engine.up()
    print(f"{name}: up in {time.monotonic() - started:.1f}s")
    yield engine
    engine.down()
    runtime.purge()


def test_up_makes_every_service_healthy(stack: Engine) -> None:
    assert health(stack) == {"node-exporter": "healthy", "prometheus": "healthy", "mlflow": "healthy"}
    for name, seen in stack.observed().items():
        assert seen.config_hash == stack.desired[name].config_hash
        assert seen.pid and seen.ref


def test_plan_after_up_is_empty_and_up_again_changes_nothing(stack: Engine) -> None:
    assert not stack.plan().actions
    assert stack.up().changed == []


def test_prometheus_scrapes_the_exporter_by_service_name(stack: Engine) -> None:
    url = stack.desired["prometheus"].url
    deadline = time.monotonic() + 90
    result: Any = None
    while time.monotonic() < deadline:
        result = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="node-exporter"}'}).json()
        series = result["data"]["result"]
        if series and series[0]["value"][1] == "1":
            return
        time.sleep(2)
    pytest.fail(f"node-exporter never scraped over the stack network: {result}")


def test_a_killed_container_is_restarted_by_its_policy(stack: Engine) -> None:
    kill_and_wait_for_restart(stack, "mlflow")


def test_down_removes_the_stack_and_leaves_others_alone(stack: Engine, tmp_path: Path) -> None:
    runtime: Any = stack.runtime
    assert isinstance(runtime, ContainerRuntime)
    with bystander(runtime) as other:
        stack.down()
        assert_down_left_only_volumes(runtime, ("mlflow", "prometheus"), other)
        started = time.monotonic()
        stack.up()
        print(f"{runtime.name}: up again from volumes in {time.monotonic() - started:.1f}s")
        assert set(health(stack).values()) == {"healthy"}
        stack.down()
        runtime.purge()
        assert owned(runtime) == {"containers": [], "networks": [], "volumes": []}

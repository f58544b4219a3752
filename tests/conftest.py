"""Shared test helpers: free ports, answers files on free ports, running the real CLI, and the
``runtime`` fixture that runs a test module once per runtime (local, podman, docker)."""

from __future__ import annotations

import functools
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.answers import SEAWEEDFS_GRPC_OFFSET, SEAWEEDFS_GRPC_PAIRED, Ports
from appliance.mlflow_server import JOB_EXECUTION

# Every `mlflow server` a test starts inherits this. MLflow 3's job runner (eight huey consumers
# for server-side jobs the appliance never submits; stacks/services.yaml turns it off too) cost
# 28 s of CPU per start, 2 GiB resident and a steady poll while it lives (measured: 35 against
# 7 CPU-seconds to healthy plus 30 s), on CI's two cores, for about twenty starts per run.
os.environ.setdefault(JOB_EXECUTION, "false")

VENV_BIN = Path(sys.executable).parent
TESTS_DIR = Path(__file__).resolve().parent
APPLIANCE = str(VENV_BIN / "appliance")
PORT_KEYS = list(Ports.model_fields)
"""Every port of the answers: a test stack gets a free one for each."""

ALL_RUNTIMES = ("local", "podman", "docker")
REQUIRE_RUNTIMES = "APPLIANCE_REQUIRE_RUNTIMES"
"""Set (to anything but 0) where every runtime must be there, as in CI: an absent one then fails the
tests that need it instead of skipping them."""


@functools.cache
def runtime_missing(name: str) -> str:
    """Why ``name`` cannot run stacks here, or "" when it can. The local runtime is always there;
    a container runtime needs its CLI (image builds) and its API socket answering (the runtimes)."""
    if name == "local":
        return ""
    if shutil.which(name) is None:
        return f"{name} is not installed"
    try:
        if name == "podman":
            import podman

            url = os.environ.get("CONTAINER_HOST", "unix:///run/podman/podman.sock")
            with podman.PodmanClient(base_url=url) as client:
                client.ping()
        else:
            import docker

            docker.from_env(timeout=10).ping()
    except Exception as err:  # any transport error: the daemon does not answer
        return f"the {name} API does not answer ({err}); scripts/setup-containers.sh starts it"
    return ""


def use_runtime(name: str) -> None:
    """Skip the calling test when runtime ``name`` is absent, or fail it when the run requires every
    runtime (``APPLIANCE_REQUIRE_RUNTIMES``, which scripts/test.sh sets)."""
    reason = runtime_missing(name)
    if not reason:
        return
    if os.environ.get(REQUIRE_RUNTIMES, "0") not in ("", "0"):
        pytest.fail(f"{reason}, and {REQUIRE_RUNTIMES} says every runtime must be here", pytrace=False)
    pytest.skip(reason)


def runtime_params(*names: str) -> list[object]:
    """``names`` as fixture parameters, each marked ``runtime(NAME)`` (select with ``-m runtime`` or
    ``-k NAME``)."""
    return [pytest.param(name, marks=pytest.mark.runtime(name), id=name) for name in names]


@pytest.fixture(scope="module", params=runtime_params(*ALL_RUNTIMES))
def runtime(request: pytest.FixtureRequest) -> str:
    """Each runtime in turn for the whole module (module-scoped stacks are built once per runtime);
    skipped only where that runtime is absent."""
    name = str(request.param)
    use_runtime(name)
    return name


def free_port() -> int:
    """A TCP port nobody listens on right now (tests run beside other tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


GRPC_OFFSET_KEYS = SEAWEEDFS_GRPC_PAIRED
"""SeaweedFS listens for gRPC on each of these ports plus 10000: both must be valid and free."""


def free_offset_port(offset: int = SEAWEEDFS_GRPC_OFFSET) -> int:
    """A free port below 65535 - ``offset`` whose ``port + offset`` is free too."""
    while True:
        port = random.randrange(20000, 65535 - offset)
        try:
            for candidate in (port, port + offset):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def free_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(set(ports.values()) | {p + 10000 for k, p in ports.items() if k in GRPC_OFFSET_KEYS}) < len(
        PORT_KEYS
    ) + len(GRPC_OFFSET_KEYS):
        ports = {key: free_offset_port() if key in GRPC_OFFSET_KEYS else free_port() for key in PORT_KEYS}
    return ports


def write_answers(path: Path, **overrides: object) -> Path:
    """An answers file on free ports; ``overrides`` are merged at the top level."""
    data: dict[str, object] = {"ports": free_ports(), "health_timeout_seconds": 240}
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(
    *args: str,
    answers: Path | None = None,
    state: Path | None = None,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``appliance`` command the way a user does."""
    cmd = [APPLIANCE]
    if answers:
        cmd += ["--answers", str(answers)]
    if state:
        cmd += ["--state-dir", str(state)]
    cmd += list(args)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=os.environ | (env or {}), check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    return write_answers(tmp_path / "appliance.yaml")


@pytest.fixture(autouse=True)
def _no_environment_leaks_between_tests() -> Iterator[None]:
    """Put ``os.environ`` back after every test.

    Some code under test writes to the process environment on purpose. ``mlflow.set_tracking_uri``
    exports ``MLFLOW_TRACKING_URI`` so that subprocesses inherit it, and the CLI's lifecycle
    commands export the data connection. Without this fixture a server a test has already
    stopped stays in the environment, and later tests that start subprocesses with
    ``os.environ | ...`` point them at it. Their results then depend on which tests ran before.
    """
    saved = dict(os.environ)
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:  # its in-process tracking URI goes back to "read the environment"
        mlflow.set_tracking_uri(None)
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


CLUSTER_MODULE_PREFIX = "test_cluster_"
"""The modules that run cluster hosts (tests/integration/_cluster_hosts.py), the cluster labs and
the wizard's cluster preflight: their hosts are containers on their own podman networks from their
own image, so nothing they start or remove is seen by the other tests, and half their time is
spent waiting on hosts (about 40 % of the CPU idle while one runs)."""


def work_unit_of(path: Path) -> str:
    """The work unit ``path``'s tests belong to when the run is spread over workers (``pytest -n 2
    --dist loadgroup``, as scripts/test.sh runs it with APPLIANCE_TEST_WORKERS=2): the cluster
    labs one unit, every other test that starts services another (they share images, the
    engines' daemons and image tags, e.g. one removes an image the next one loads, so they keep
    today's order on one worker), each unit test file its own."""
    if path.relative_to(TESTS_DIR).parts[0] == "unit":
        return f"unit-{path.stem}"
    if path.name.startswith(CLUSTER_MODULE_PREFIX):
        return "cluster"
    return "services"


EXTENDED: dict[str, str] = {
    "integration/test_container_stack.py[podman]": "the small stack on podman (test_container_lab: podman)",
    "integration/test_container_lab.py[docker]": "the whole lab on docker (test_container_stack: docker)",
    "integration/test_lab_stack.py[docker]": "the lab stack on docker (test_container_stack: docker)",
    "integration/test_lab_stack.py[podman]": (
        "the lab stack through the CLI on podman (test_container_lab: podman, the CLI's checks too)"
    ),
    "integration/test_bundle_offline_podman.py": "a bundle's containers on podman with no network",
    "integration/test_cluster_serving_gateway.py": (
        "hosts with no route out installed from a bundle, and the gateway's drain, join and fail "
        "window across serving hosts (test_bundle_offline: a bundle offline; test_cluster_two_hosts: "
        "a serving host drained before it stops; test_cluster_lifecycle: a rollout through the gateway)"
    ),
    "integration/test_restore_seaweedfs.py": (
        "backup and restore of a SeaweedFS stack onto a fresh state folder, in place and onto podman "
        "(test_upgrade_migration: a SeaweedFS stack's objects restored in place by a failed upgrade's "
        "rollback; test_backup_restore: a restore onto podman, a damaged archive refused)"
    ),
    "integration/test_cluster_registry.py": (
        "two MLflow servers on one PostgreSQL behind the gateway and an edge host across a cut link "
        "(test_cluster_two_hosts: MLflow on PostgreSQL in a cluster; test_edge_follows_registry: an "
        "edge model server through its registry's outage)"
    ),
}
"""The extended tier: scenarios that ``make test`` (CI) leaves out and ``make test-all`` runs, a
module's path under tests/ (or ``path[param]``, or ``path::test``) each, with what it proves:
together about 1,750 s that CI's 90 minutes do not hold beside the rest (the per-module table the
run prints; CI's run of the whole CI tier took 5,351 s of its 5,400 with the two cluster modules and
the SeaweedFS restore below in it). Each builds on a capability a test in the CI tier proves: the
small stack's checks on podman are a subset of the whole lab's on podman (healthy, a zero-action
plan, scraping by service name, a killed container restarted, a clean down), and so are the CLI's on
the lab on podman (status with memory, data across down and up, a busy port: test_container_lab runs
them through the same CLI on the same lab it brings up once), the lab on podman stands for docker
beside the container stack on docker, a bundle runs offline on the local runtime
(test_bundle_offline), a serving host is drained before it stops (test_cluster_two_hosts), a model
version rolls out through a cluster's gateway (test_cluster_lifecycle), MLflow keeps a cluster's
registry in PostgreSQL (test_cluster_two_hosts, test_cluster_lifecycle), a SeaweedFS stack's objects
are restored in place (test_upgrade_migration's rollback) and an edge model server follows its
registry through an outage (test_edge_follows_registry). They are marked ``extended`` here, in one
place."""


def extended_reason(item: pytest.Item) -> str | None:
    """Why ``item`` is in the extended tier (``EXTENDED``), or None when CI runs it."""
    name = Path(str(item.path)).resolve().relative_to(TESTS_DIR).as_posix()
    param = getattr(getattr(item, "callspec", None), "id", None)
    keys = [name, f"{name}::{getattr(item, 'originalname', item.name)}"]
    keys += [f"{name}[{part}]" for part in str(param).split("-")] if param else []
    return next((EXTENDED[key] for key in keys if key in EXTENDED), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put each test in its work unit (``work_unit_of``) before xdist's own hook reads the marks,
    and mark the extended tier's (``EXTENDED``)."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(work_unit_of(Path(str(item.path)).resolve())))
        if extended_reason(item) is not None:
            item.add_marker(pytest.mark.extended)


CI_BUDGET_S = 5400
"""CI's limit for the whole run, the install included (90 minutes on 2 cores)."""
CI_SHARE_AIM = 0.75
"""The share of ``CI_BUDGET_S`` the tests of CI's tier are kept under on this 2-core machine: the
install and lint take about 4 minutes more, and CI's machine ran 10-15 % slower than this one."""

_SECONDS_PER_MODULE: dict[str, float] = {}
_SESSION_STARTED = [time.monotonic()]


def pytest_sessionstart() -> None:
    _SESSION_STARTED[0] = time.monotonic()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's set-up, call and tear-down time, summed per module and runtime (a module run
    once per runtime shows each run apart, as ``EXTENDED`` can name them; the workers' reports
    reach the controller through this hook too)."""
    module, _, test = report.nodeid.partition("::")
    params = test.partition("[")[2].rstrip("]").split("-")
    module += "".join(f"[{p}]" for p in params if p in ALL_RUNTIMES)
    _SECONDS_PER_MODULE[module] = _SECONDS_PER_MODULE.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the run's time went, per work unit and for the slowest modules: what balancing the
    units over the workers (``work_unit_of``) is decided from."""
    if not _SECONDS_PER_MODULE:
        return
    units: dict[str, float] = {}
    for module, seconds in _SECONDS_PER_MODULE.items():
        path = TESTS_DIR.parent / module.partition("[")[0]
        unit = work_unit_of(path) if path.is_relative_to(TESTS_DIR) else "other"
        unit = "unit" if unit.startswith("unit-") else unit
        units[unit] = units.get(unit, 0.0) + seconds
    terminalreporter.section("seconds per work unit and slowest modules")
    terminalreporter.write_line(
        "  ".join(f"{u} {s:.0f}" for u, s in sorted(units.items(), key=lambda i: -i[1]))
    )
    total = time.monotonic() - _SESSION_STARTED[0]  # wall time: workers' modules overlap
    share = total / CI_BUDGET_S
    terminalreporter.write_line(
        f"tests took {total:.0f} s, {share:.0%} of CI's {CI_BUDGET_S} s"
        + (
            f" (over the {CI_SHARE_AIM:.0%} the tier is kept under: speed a module up or move it to EXTENDED)"
            if share > CI_SHARE_AIM
            else ""
        )
    )
    for module, seconds in sorted(_SECONDS_PER_MODULE.items(), key=lambda i: -i[1])[:30]:
        terminalreporter.write_line(f"{seconds:8.1f}  {module}")

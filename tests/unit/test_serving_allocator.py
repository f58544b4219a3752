"""The model server keeps large freed buffers for the next request (serving/allocator.py).

What the setting changes is how often the kernel faults fresh pages in, which a process counts
itself (``ru_minflt``): each test process allocates and frees requests' worth of 400 kB buffers
(four at a time, as a gRPC call's copies of an image batch) with and without the setting. mallopt
acts on the whole process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.workloads.serving import allocator

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PROBE = """
import resource, sys
from appliance.workloads.serving.allocator import keep_freed_buffers
if sys.argv[1] == "tuned":
    assert keep_freed_buffers({}), "mallopt refused the thresholds"
def request():
    buffers = [bytes(400_000) for _ in range(4)]
    del buffers
for _ in range(5):
    request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    request()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
"""


def _faults_per_request(mode: str) -> float:
    """The probe in a fresh interpreter, with none of the operator's malloc settings of this
    process's environment (they would change the default case and be kept in the tuned one)."""
    env = {k: v for k, v in os.environ.items() if k not in allocator.OPERATOR_SETTINGS}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def test_large_buffers_are_reused_instead_of_faulted_in_again() -> None:
    glibc_default = _faults_per_request("default")
    tuned = _faults_per_request("tuned")
    # 4 x 400 kB is about 390 pages: glibc's own rule faults in a good share of them every time
    assert glibc_default > 50, f"the probe no longer shows glibc's trimming ({glibc_default} faults)"
    assert tuned < 2, f"{tuned} page faults per request with the thresholds set"


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"},
    ],
)
def test_an_operators_own_malloc_setting_is_left_alone(environ: dict[str, str]) -> None:
    assert allocator.operator_choice(environ)
    assert allocator.keep_freed_buffers(environ) is False


def test_other_tunables_are_not_an_operators_choice_of_thresholds() -> None:
    assert allocator.operator_choice({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == []


RUN_PROBE = """
from appliance.workloads.serving import allocator, server
from appliance.workloads.serving.config import ServeConfig
def called():
    raise SystemExit(7)
def served(config):
    raise SystemExit(9)
allocator.keep_freed_buffers = called
server.serve = served
server.run(ServeConfig(models=(("m", "/nonexistent"),)))
"""


def test_the_server_sets_them_before_it_serves() -> None:
    """``server.run`` asks for the thresholds before the event loop starts (no request buffer is
    made before): stopped at that call (exit 7), it never served (exit 9). In a fresh interpreter:
    the server's module loads the protocol's generated stubs, which clash with tritonclient's copy
    that other test modules of this process load."""
    out = subprocess.run([sys.executable, "-c", RUN_PROBE], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 7, (out.returncode, out.stderr[-500:])

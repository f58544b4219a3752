"""The model server keeps large freed buffers for the next request (serving/allocator.py).

What the setting changes is how often the kernel faults fresh pages in, which a process counts
itself (``ru_minflt``): each test process allocates and frees requests' worth of 400 kB buffers
(four at a time, as a gRPC call's copies of an image batch) with and without the setting. mallopt
acts on the whole process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

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
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def test_large_buffers_are_reused_instead_of_faulted_in_again() -> None:
    glibc_default = _faults_per_request("default")
    tuned = _faults_per_request("tuned")
    # 4 x 400 kB is about 390 pages: glibc's own rule faults in a good share of them every time
    assert glibc_default > 50, f"the probe no longer shows glibc's trimming ({glibc_default} faults)"
    assert tuned < 2, f"{tuned} page faults per request with the thresholds set"


@pytest.mark.parametrize("name", allocator.OPERATOR_SETTINGS)
def test_an_operators_own_malloc_setting_is_left_alone(name: str) -> None:
    assert allocator.keep_freed_buffers({name: "131072"}) is False

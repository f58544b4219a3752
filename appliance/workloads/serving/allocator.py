"""How the model server's process asks glibc's malloc to keep freed memory for the next request.

A request whose tensors are large (a batch of images, one image of 224x224x3 in FP32 is already
588 KiB) passes through several buffers of that size: the socket's reads joined into one body, the
protobuf message of a gRPC call, the decoded array. glibc serves allocations of 128 KiB and more
with a fresh ``mmap`` and gives them back with ``munmap`` on free; what stays on the heap it trims
as soon as 128 KiB lie free at its top. Either way every such request touches new pages, and the
kernel faults each 4 KiB page in and zeroes it: measured here, 400 page faults per gRPC request of
8 images of [3,64,64] (384 KiB) and a third of the server's CPU time for that request
(``benchmarks/serving/request_cost.py --models cnn --rows 8``, benchmarks/README.md).

glibc raises both thresholds itself when a mapped chunk is freed (the mmap threshold to its size,
the trim threshold to twice that), but only as far as the largest buffer freed so far, and a
server that has seen only mid-sized requests keeps faulting: the same gRPC load ran without faults
once a larger JSON request had gone before it. ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD`` are what
that rule reaches at its ceiling (32 MiB freed), set from the start: buffers up to 32 MiB stay on
the heap, where the next request reuses them. Measured on the same load: 400-465 page faults per
request -> 2, the server's CPU per request down by 28-34 %; JSON requests of 8 images (2 MiB) 1.3x
cheaper too (a 4 MiB threshold made them dearer: their parsing allocates more than 4 MiB). The
price is bounded: at most ``TRIM_THRESHOLD`` of freed memory stays with the process after a burst
of large requests, and allocations above ``MMAP_THRESHOLD`` still get their own mapping. A
process started with glibc's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in its
environment keeps the operator's choice, and a C library without ``mallopt`` (musl) is left as
it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_buffers(environ: dict[str, str] | None = None) -> bool:
    """Set the thresholds above, once, at the start of the server's process. Returns whether
    they were set (False: the operator chose their own, or the C library has no ``mallopt``)."""
    environ = dict(os.environ) if environ is None else environ
    chosen = [name for name in OPERATOR_SETTINGS if name in environ]
    if chosen:
        log.info("malloc thresholds left to the environment (%s)", ", ".join(chosen))
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting the mmap threshold first also stops glibc's own
    # adjustment of both thresholds, so the trim threshold set next stays as set
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

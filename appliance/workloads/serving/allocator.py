"""How the model server's process asks glibc's malloc to keep freed memory for the next request.

A request whose tensors are large (a batch of images, one image of 224x224x3 in FP32 is already
588 KiB) passes through several buffers of that size: the socket's reads joined into one body, the
protobuf message of a gRPC call, the decoded array. glibc serves allocations of 128 KiB and more
with a fresh ``mmap`` and gives them back with ``munmap`` on free; what stays on the heap it trims
as soon as 128 KiB lie free at its top. Either way every such request touches new pages, and the
kernel faults each 4 KiB page in and zeroes it: measured here, 400-465 page faults per gRPC
request of 8 images of [3,64,64] (384 KiB), a third to a half of the server's CPU time for that
request (``benchmarks/serving/request_cost.py --models cnn --rows 8``, benchmarks/README.md).

glibc raises both thresholds itself when a mapped chunk is freed (the mmap threshold to its size,
the trim threshold to twice that), but only as far as the largest buffer freed so far, and a
server that has seen only mid-sized requests keeps faulting: the same gRPC load ran without faults
once a larger JSON request had gone before it. ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD`` are where
that rule stops (``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB on 64-bit), set from the start: buffers up
to 32 MiB stay on the heap, where the next request reuses them. Measured on the same load: 2 page
faults per request, the server's CPU per image 422-514 -> 274-284 us; JSON and single small images
unchanged (a 4 MiB threshold, tried first, made JSON requests of 8 images dearer: their parsing
allocates past it). The price: after a burst of large requests up to ``TRIM_THRESHOLD`` of freed
memory may stay with each malloc arena (the event loop's and the inference threads'), plus what
fragmentation keeps below live blocks; allocations above ``MMAP_THRESHOLD`` still get their own
mapping and go back at once.

An operator's own choice wins: glibc's ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` or the
same two settings in ``GLIBC_TUNABLES`` leave the process as they made it, and a C library without
``mallopt`` (musl) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # where glibc's own adjustment stops (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the trim threshold that adjustment pairs with it
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OPERATOR_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def operator_choice(environ: Mapping[str, str]) -> list[str]:
    """The malloc thresholds the process's environment sets itself (empty: none)."""
    chosen = [name for name in OPERATOR_SETTINGS if name in environ]
    tunables = environ.get("GLIBC_TUNABLES", "")
    chosen += [t for t in OPERATOR_TUNABLES if any(p.split("=")[0] == t for p in tunables.split(":"))]
    return chosen


def keep_freed_buffers(environ: Mapping[str, str] | None = None) -> bool:
    """Set the thresholds above, once, at the start of the server's process. Returns whether
    they were set (False: the operator chose their own, or the C library has no ``mallopt``)."""
    chosen = operator_choice(os.environ if environ is None else environ)
    if chosen:
        log.info("malloc thresholds left as the environment sets them (%s)", ", ".join(chosen))
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        log.info("no mallopt in this C library: large request buffers are not kept")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 when it takes a value; setting either threshold also ends glibc's own
    # adjustment of both, so each stays as set here
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        log.warning("mallopt refused the malloc thresholds: large request buffers are not kept")
        return False
    log.info(
        "malloc keeps freed buffers up to %d MiB (trim threshold %d MiB)",
        MMAP_THRESHOLD >> 20,
        TRIM_THRESHOLD >> 20,
    )
    return True

"""Triton's system shared-memory extension: tensors a client on the same host leaves in POSIX
shared memory instead of sending them in the request.

Why: on an image-sized input the request's bytes are part of the front end's cost (read off the
socket, buffered, framed); with a region registered once, a request names the region, the
offset and the size, and the server reads the tensor in place (and can write an output into
another region). It is what ``perf_analyzer --shared-memory system`` and tritonclient's
``utils.shared_memory`` use.

Off unless the server starts with ``--allow-client-shm`` (Triton's flag and default): a region
is a file of the host the server maps and writes into. The rules against a hostile caller:

- the key names a POSIX shared-memory object, ``/`` and 1-255 of ``[A-Za-z0-9._-]`` (not ``.``
  or ``..``), opened as ``/dev/shm/NAME`` without following a link; it must be a regular file
  owned by the server's own user (a caller cannot make the server read or write another
  account's memory) and hold ``offset + byte_size`` bytes;
- regions are counted and their bytes summed against ``max_shm_regions`` and ``max_shm_bytes``;
- a name already registered is refused until it is unregistered (Triton's rule: a region's key
  cannot change under requests that name it);
- a tensor's range must lie inside its region; an output's bytes must fit the size it asked for.

The region is mapped once, at registration, and its descriptor closed; unregistering drops the
mapping from the table (an array still reading it keeps it mapped until it is gone).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.workloads.serving.errors import BadRequest
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.tensors import from_raw

SHM_ROOT = Path("/dev/shm")
_KEY = re.compile(r"/[A-Za-z0-9._-]{1,255}")
_MAX_NAME = 256
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
DISABLED = (
    "this server does not take client shared memory: start it with --allow-client-shm "
    "(the stack: serving.allow_client_shm: true)"
)

CUDA_REFUSED = (
    "CUDA shared memory is not taken by this server; use system shared memory "
    "(perf_analyzer --shared-memory system, tritonclient.utils.shared_memory)"
)


@dataclass(frozen=True)
class Region:
    """A registered region: its bytes, mapped writable."""

    name: str
    key: str
    offset: int
    byte_size: int
    view: memoryview

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lies: a region and a byte range inside it."""

    region: str
    offset: int
    byte_size: int


def tensor_ref(params: Mapping[str, Any], tensor: str) -> TensorRef | None:
    """The shared-memory parameters of a tensor, or None when it has none; one of region and
    size without the other, or a value of the wrong type, is a 400 naming the tensor."""
    region, size, offset = params.get(REGION), params.get(BYTE_SIZE), params.get(OFFSET, 0)
    if region is None and size is None:
        if OFFSET in params:
            raise BadRequest(f"tensor '{tensor}': {OFFSET} given without {REGION} and {BYTE_SIZE}")
        return None
    if region is None or size is None:
        raise BadRequest(f"tensor '{tensor}': give both {REGION} and {BYTE_SIZE} (got one of them)")
    if not isinstance(region, str) or not region:
        raise BadRequest(f"tensor '{tensor}': {REGION} must be a region name (a string)")
    where = f"tensor '{tensor}'"
    return TensorRef(region, _count(offset, f"{where}: {OFFSET}"), _count(size, f"{where}: {BYTE_SIZE}"))


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{what} must be a non-negative integer, got {value!r}")
    return value


class SharedMemoryRegions:
    """The registered regions of one server (both front ends share it)."""

    def __init__(self, limits: ServerLimits, allowed: bool, root: Path = SHM_ROOT) -> None:
        self.limits = limits
        self.allowed = allowed
        self.root = root
        self._regions: dict[str, Region] = {}

    # the extension's API ------------------------------------------------------------------
    def register(self, name: str, key: object, offset: object, byte_size: object) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the object ``key`` as region ``name`` (the
        values as a caller sent them: each is checked here)."""
        if not self.allowed:
            raise BadRequest(DISABLED)
        if not name or len(name) > _MAX_NAME or not name.isprintable():
            raise BadRequest(f"region name must be 1-{_MAX_NAME} printable characters, got {name!r}")
        if name in self._regions:
            raise BadRequest(f"shared memory region '{name}' is already registered; unregister it first")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key in ("/.", "/.."):
            raise BadRequest(
                f"shared memory key {key!r} is not a POSIX shared-memory name: '/' followed by "
                "1-255 letters, digits, '.', '_' or '-'"
            )
        offset = _count(offset, f"region '{name}': offset")
        byte_size = _count(byte_size, f"region '{name}': byte_size")
        if byte_size == 0:
            raise BadRequest(f"region '{name}': byte_size must be at least 1")
        if len(self._regions) >= self.limits.max_shm_regions:
            raise BadRequest(
                f"{len(self._regions)} shared memory regions are registered, the most this server takes "
                f"(max_shm_regions); unregister one first"
            )
        held = sum(r.byte_size for r in self._regions.values())
        if held + byte_size > self.limits.max_shm_bytes:
            raise BadRequest(
                f"region '{name}' of {byte_size} bytes would bring the registered regions to "
                f"{held + byte_size} bytes, past max_shm_bytes ({self.limits.max_shm_bytes})"
            )
        self._regions[name] = Region(name, key, offset, byte_size, self._map(key, offset, byte_size))

    def _map(self, key: str, offset: int, byte_size: int) -> memoryview:
        path = self.root / key[1:]
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BadRequest(f"no shared memory object {key} on this host (create it first)") from None
        except OSError as err:
            raise BadRequest(f"cannot open shared memory object {key}: {err.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise BadRequest(f"shared memory object {key} is not a regular shared-memory file")
            if info.st_uid != os.geteuid():
                raise BadRequest(
                    f"shared memory object {key} belongs to another user (uid {info.st_uid}); the "
                    f"server maps only its own user's objects (uid {os.geteuid()})"
                )
            if offset + byte_size > info.st_size:
                raise BadRequest(
                    f"shared memory object {key} holds {info.st_size} bytes, fewer than offset "
                    f"{offset} + byte_size {byte_size}"
                )
            mapped = mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return memoryview(mapped)[offset : offset + byte_size]

    def unregister(self, name: str | None) -> None:
        """Drop one region (an unknown name is not an error, as in Triton) or, with no name, all."""
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def cuda_status(self, name: str | None) -> list[dict[str, Any]]:
        """The CUDA twin's status: never a region (clients ask for it, and unregister all of
        both kinds, around a run; registering one is refused with CUDA_REFUSED)."""
        if name:
            raise BadRequest(f"unknown CUDA shared memory region '{name}' ({CUDA_REFUSED})")
        return []

    def status(self, name: str | None) -> list[dict[str, Any]]:
        """Every region, or the one named (400 when it is not registered)."""
        if not name:
            return [r.status() for r in self._regions.values()]
        return [self._region(name, "status of").status()]

    # tensors ------------------------------------------------------------------------------
    def read(self, ref: TensorRef, datatype: str, shape: tuple[int, ...], tensor: str) -> np.ndarray:
        """An input tensor, read in place from its region."""
        return from_raw(self._range(ref, tensor), datatype, shape, tensor)

    def write(self, ref: TensorRef, raw: bytes, tensor: str) -> None:
        """An output tensor's bytes into its region; more bytes than it asked for is a 400."""
        if len(raw) > ref.byte_size:
            raise BadRequest(
                f"output '{tensor}' is {len(raw)} bytes, more than its {BYTE_SIZE} of {ref.byte_size}"
            )
        view = self._range(ref, tensor)
        view[: len(raw)] = raw

    def check(self, ref: TensorRef, tensor: str) -> None:
        """Fail before the model runs when an output's range is not inside a registered region."""
        self._range(ref, tensor)

    def _region(self, name: str, use: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            hint = "register it first" if self.allowed else DISABLED
            raise BadRequest(f"{use} unknown shared memory region '{name}' ({hint})")
        return region

    def _range(self, ref: TensorRef, tensor: str) -> memoryview:
        region = self._region(ref.region, f"tensor '{tensor}' names")
        if ref.offset + ref.byte_size > region.byte_size:
            raise BadRequest(
                f"tensor '{tensor}': offset {ref.offset} + byte_size {ref.byte_size} runs past region "
                f"'{region.name}' of {region.byte_size} bytes"
            )
        return region.view[ref.offset : ref.offset + ref.byte_size]


NO_REGIONS = SharedMemoryRegions(ServerLimits(), allowed=False)
"""The table of a server without the extension (every registration refused)."""

"""Triton's system shared-memory extension: tensors a client on the same host leaves in POSIX
shared memory instead of sending them in the request.

Why: on an image-sized input the request's bytes are part of the front end's cost (read off the
socket, buffered, framed); with a region registered once, a request names the region, the
offset and the size, and the server reads the tensor in place (and can write an output into
another region). It is what ``perf_analyzer --shared-memory system`` and tritonclient's
``register_system_shared_memory`` use.

Off unless the server starts with ``--allow-client-shm`` (Triton's flag and default): a region
is a file of the host the server reads and writes. The rules against a hostile caller:

- only a client on this host running as the server's own user may register, unregister, list
  or use regions (``peer.Peer.same_user``: the kernel's word, not the token's); others get a
  403, also with a valid token, also through the TLS gateway;
- the key names a POSIX shared-memory object, ``/`` and 1-255 of ``[A-Za-z0-9._-]`` (not ``.``
  or ``..``), opened as ``/dev/shm/NAME`` without following a link; it must be a regular file
  owned by the server's own user and hold ``offset + byte_size`` bytes;
- regions are counted and their bytes summed against ``max_shm_regions`` and ``max_shm_bytes``;
- a name already registered is refused until it is unregistered (Triton's rule);
- a tensor's range must lie inside its region; an output's bytes must fit the size it asked for,
  and its region is resolved before the model runs (a name re-registered meanwhile does not
  redirect it).

An input is read in place from a mapping of the region (no copy: for 8 images a request the
copy cost 4 us a row, 3 points of the floor share, benchmarks/README.md); before each read the
object's size is checked, so a client that shrank its object after registering it gets a 400
instead of the server dying of SIGBUS on the missing pages. What that check cannot stop is a
client of the server's own user shrinking the object while a request naming it is in flight:
that user can stop the server anyway, and nobody else can register or use a region. Outputs are
written with ``pwrite`` (past the end of a shrunk object it grows again, never a fault). The
region keeps its object open and mapped until the table and every request using it let go.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import stat
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.workloads.serving.errors import BadRequest, Forbidden
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.peer import Peer
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
NOT_LOCAL = (
    "shared memory is only for clients on the serving host running as the server's own user "
    "(not from another host, another account or through the gateway): send the tensor in the request"
)
CUDA_REFUSED = (
    "CUDA shared memory is not taken by this server; use system shared memory "
    "(perf_analyzer --shared-memory system, tritonclient's register_system_shared_memory)"
)


@dataclass(frozen=True)
class Region:
    """A registered region: the open object, where in it the region lies, and its bytes mapped."""

    name: str
    key: str
    offset: int
    byte_size: int
    file: io.FileIO  # closed (and the view unmapped) when the table and every request let go
    view: memoryview

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


@dataclass(frozen=True)
class TensorRef:
    """Where a request puts one tensor: a region's name and a byte range inside it."""

    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class Target:
    """A TensorRef resolved to its region: what an output is written to after the model ran."""

    region: Region
    offset: int  # in the region
    byte_size: int

    def write(self, raw: bytes, tensor: str) -> None:
        """An output tensor's bytes into this range; more than it asked for is a 400."""
        if len(raw) > self.byte_size:
            raise BadRequest(
                f"output '{tensor}' is {len(raw)} bytes, more than its {BYTE_SIZE} of {self.byte_size}"
            )
        try:
            os.pwrite(self.region.file.fileno(), raw, self.region.offset + self.offset)
        except (OSError, ValueError) as err:  # ValueError: closed after all (cannot happen while held)
            raise BadRequest(
                f"output '{tensor}': writing region '{self.region.name}' failed: {err}"
            ) from None


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{what} must be a non-negative integer, got {value!r}")
    return value


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


def cuda_status(name: str | None) -> list[dict[str, Any]]:
    """The CUDA twin's status: never a region (clients ask for it, and unregister all of both
    kinds, around a run; registering one is refused with CUDA_REFUSED)."""
    if name:
        raise BadRequest(f"unknown CUDA shared memory region '{name}' ({CUDA_REFUSED})")
    return []


class SharedMemoryRegions:
    """The registered regions of one server (both front ends share it). Its methods trust their
    caller: requests reach it through ``for_caller``, which checks who is asking."""

    def __init__(self, limits: ServerLimits, allowed: bool, root: Path = SHM_ROOT) -> None:
        self.limits = limits
        self.allowed = allowed
        self.root = root
        self._regions: dict[str, Region] = {}

    def for_caller(self, peer: Peer | None, forwarded: bool) -> CallerRegions:
        """The regions as one request may use them (see CallerRegions)."""
        return CallerRegions(self, peer, forwarded)

    # the extension's API ------------------------------------------------------------------
    def register(self, name: str, key: object, offset: object, byte_size: object) -> None:
        """Open ``byte_size`` bytes at ``offset`` of the object ``key`` as region ``name`` (the
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
        file = self._open(key, offset, byte_size)
        skip = offset % mmap.ALLOCATIONGRANULARITY  # map from the page the region starts in
        try:
            mapped = mmap.mmap(file.fileno(), skip + byte_size, offset=offset - skip)
        except (OSError, ValueError, OverflowError) as err:  # ValueError: shrunk since the fstat
            file.close()
            raise BadRequest(f"cannot map region '{name}' of {key}: {err}") from None
        view = memoryview(mapped)[skip : skip + byte_size]
        region = self._regions[name] = Region(name, key, offset, byte_size, file, view)
        weakref.finalize(region, file.close)  # when the table and the last request let go

    def _open(self, key: str, offset: int, byte_size: int) -> io.FileIO:
        path = self.root / key[1:]
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BadRequest(f"no shared memory object {key} on this host (create it first)") from None
        except OSError as err:
            raise BadRequest(f"cannot open shared memory object {key}: {err.strerror}") from None
        file = io.FileIO(fd, "r+")  # owns fd from here: closed on every path out
        try:
            self._check(key, fd, offset, byte_size)
        except BaseException:
            file.close()
            raise
        return file

    @staticmethod
    def _check(key: str, fd: int, offset: int, byte_size: int) -> None:
        """The opened object is a shared-memory file of this user holding offset + byte_size."""
        try:
            info = os.fstat(fd)
        except OSError as err:
            raise BadRequest(f"cannot read shared memory object {key}: {err.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest(f"shared memory object {key} is not a regular shared-memory file")
        if info.st_uid != os.geteuid():
            raise BadRequest(
                f"shared memory object {key} belongs to another user (uid {info.st_uid}); the "
                f"server takes only its own user's objects (uid {os.geteuid()})"
            )
        if offset + byte_size > info.st_size:
            raise BadRequest(
                f"shared memory object {key} holds {info.st_size} bytes, fewer than offset {offset} + "
                f"byte_size {byte_size}"
            )

    def unregister(self, name: str | None) -> None:
        """Drop one region (an unknown name is not an error, as in Triton) or, with no name, all.
        Its object stays open for requests already using it, and is closed after them."""
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str | None) -> list[dict[str, Any]]:
        """Every region, or the one named (400 when it is not registered)."""
        if not name:
            return [r.status() for r in self._regions.values()]
        return [self._region(name, "status of").status()]

    # tensors ------------------------------------------------------------------------------
    def resolve(self, ref: TensorRef, tensor: str) -> Target:
        """A tensor's range in its region, checked now (an output's, before the model runs)."""
        region = self._region(ref.region, f"tensor '{tensor}' names")
        if ref.offset + ref.byte_size > region.byte_size:
            raise BadRequest(
                f"tensor '{tensor}': offset {ref.offset} + byte_size {ref.byte_size} runs past region "
                f"'{region.name}' of {region.byte_size} bytes"
            )
        return Target(region, ref.offset, ref.byte_size)

    def read(self, ref: TensorRef, datatype: str, shape: tuple[int, ...], tensor: str) -> np.ndarray:
        """An input tensor, read in place once its bytes are known to be still there."""
        target = self.resolve(ref, tensor)
        region = target.region
        end = region.offset + target.offset + target.byte_size
        size = os.fstat(region.file.fileno()).st_size
        if size < end:
            raise BadRequest(
                f"tensor '{tensor}': region '{region.name}' ends {end - size} bytes short (its object "
                "was shrunk after it was registered; register it again)"
            )
        return from_raw(
            region.view[target.offset : target.offset + target.byte_size], datatype, shape, tensor
        )

    def _region(self, name: str, use: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            hint = "register it first" if self.allowed else DISABLED
            raise BadRequest(f"{use} unknown shared memory region '{name}' ({hint})")
        return region


class CallerRegions:
    """The regions as one request's caller may use them: the whole API for a client on this
    host running as the server's user (asked of the kernel once, on first use); for anyone
    else a 403 on any use, and nothing to see. On a server without the extension: status and
    unregister answer as for an empty table (clients call them around a run), the rest 400."""

    __slots__ = ("_forwarded", "_peer", "regions")

    def __init__(self, regions: SharedMemoryRegions, peer: Peer | None, forwarded: bool) -> None:
        self.regions = regions
        self._peer = peer
        self._forwarded = forwarded

    def _admit(self) -> SharedMemoryRegions:
        regions = self.regions
        if not regions.allowed:
            raise BadRequest(DISABLED)
        if self._forwarded or self._peer is None or not self._peer.same_user():
            raise Forbidden(NOT_LOCAL)
        return regions

    def register(self, name: str, key: object, offset: object, byte_size: object) -> None:
        self._admit().register(name, key, offset, byte_size)

    def unregister(self, name: str | None) -> None:
        if self.regions.allowed:
            self._admit().unregister(name)

    def status(self, name: str | None) -> list[dict[str, Any]]:
        if not self.regions.allowed:
            return self.regions.status(name)  # empty, or 400 for a name
        return self._admit().status(name)

    def resolve(self, ref: TensorRef, tensor: str) -> Target:
        return self._admit().resolve(ref, tensor)

    def read(self, ref: TensorRef, datatype: str, shape: tuple[int, ...], tensor: str) -> np.ndarray:
        return self._admit().read(ref, datatype, shape, tensor)


NO_REGIONS = CallerRegions(SharedMemoryRegions(ServerLimits(), allowed=False), None, False)
"""The regions of a server without the extension (every registration and use refused)."""

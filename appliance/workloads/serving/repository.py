"""The models a server holds, their load state, and hot reload when a source moves.

Each name maps to an Entry: its source, the LoadedModel being served (or None) and its Batcher.
Loading happens in a worker thread (download, session build, warm-up) and ends with one reference
assignment, so a request sees either the old version or the new one, never a half-built one;
requests already queued on the old Batcher finish on the old session.

Two locks per entry: ``lock`` lets one load at a time fetch and build (held for minutes on a slow
registry), ``swap`` guards what is served and whether it is wanted (held for assignments only), so
an unload answers at once and a load finishing after it cannot serve the model again.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.names import child_path, name_problem
from appliance.workloads.serving.batcher import Batcher
from appliance.workloads.serving.edge_cache import CachedSource
from appliance.workloads.serving.errors import BadRequest, Forbidden, NotFound, Unavailable
from appliance.workloads.serving.failed_versions import FIRST_RETRY_S, FailedVersion, failed_again
from appliance.workloads.serving.model import LoadedModel, SessionOptions
from appliance.workloads.serving.sources import MlflowSource, Source, dropped_on_failure, source_for

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One model name: where it comes from and what is served now."""

    name: str
    source: Source
    model: LoadedModel | None = None
    batcher: Batcher | None = None
    fingerprint: str | None = None
    state: str = "UNAVAILABLE"  # READY, LOADING, UNAVAILABLE
    reason: str = ""
    loads: int = 0
    wanted: bool = True
    """False once unloaded through the repository API: the poller leaves it alone until loaded again."""
    scratch: Path | None = None
    failed: FailedVersion | None = None
    """The version that last failed to download or load, and when the poller may try it again."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """One load at a time: held through download, session build and warm-up."""
    swap: threading.Lock = field(default_factory=threading.Lock)
    """What is served (model, batcher, fingerprint, scratch), its state and ``wanted``: held only
    while they are read together or assigned."""


class ModelRepository:
    """Name -> Entry, with load/unload/index for the repository extension and a reload poller."""

    def __init__(
        self,
        session_opts: SessionOptions,
        max_batch_size: int,
        max_queue_delay_s: float,
        drift_window: int,
        on_batch: Callable[..., None] | None = None,
        cache_dir: Path | None = None,
        first_retry_s: float = FIRST_RETRY_S,
    ) -> None:
        self.session_opts = session_opts
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.drift_window = drift_window
        self.on_batch = on_batch
        self.cache_dir = cache_dir
        """Where the last good version of each registry-followed model is kept (None: nowhere)."""
        self.entries: dict[str, Entry] = {}
        self.allowed: dict[str, str] = {}
        """Source key -> URI of every source given at startup: the only places a load may name."""
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="serving")
        """The inference batches' threads."""
        self.loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="serving-load")
        """Loads' own threads (download, session build, warm-up): a slow registry, or API loads
        waiting on a model's lock behind one, take none of the inference batches' threads."""
        self.stopping = threading.Event()
        """Set when the server stops: every source's registry download in progress gives up."""
        self.first_retry_s = first_retry_s
        """The wait before a failed version is fetched again the first time: the poller's round, so
        that a version failing at start is tried again the first round too."""

    def add(self, name: str | None, uri: str) -> Entry:
        """A model the server is started with; its source becomes one a load may name."""
        source = source_for(uri)
        self.allowed[source.location] = uri
        return self._add(name, source)

    def _add(self, name: str | None, source: Source) -> Entry:
        entry = Entry(name or source.default_name(), source)
        entry.source = self._cached(entry.name, source)
        self.entries[entry.name] = entry
        return entry

    def _cached(self, name: str, source: Source) -> Source:
        """A registry source through the local cache of its last good version, when there is one
        (the cache outlives registry outages and restarts; files and S3 objects need none)."""
        source.stopping = self.stopping
        if self.cache_dir is None or not isinstance(source, MlflowSource):
            return source
        return CachedSource(source, child_path(self.cache_dir, name))

    def check_source(self, uri: str) -> Source:
        """The Source of ``uri`` if the server was started with it, else a 403 naming those it was:
        the admin API swaps what is served, it does not read arbitrary paths or buckets."""
        try:
            source = source_for(uri)
        except ValueError as err:
            raise Forbidden(f"cannot load from {uri!r}: {err}") from None
        if source.location not in self.allowed:
            raise Forbidden(
                f"cannot load from {uri!r}: this server loads only from the sources it was started "
                f"with ({', '.join(sorted(self.allowed.values())) or 'none'}); start it with another --model"
            )
        return source

    def models(self) -> list[LoadedModel]:
        return [e.model for e in list(self.entries.values()) if e.model is not None]

    def get(self, name: str, version: str | None = None) -> tuple[LoadedModel, Batcher]:
        """The served version of ``name`` (404 unknown, 503 not loaded, 404 other version)."""
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none"
            raise NotFound(f"unknown model '{name}' (served models: {known})")
        model, batcher = entry.model, entry.batcher
        if model is None or batcher is None:
            why = f"{entry.state.lower()}: {entry.reason}" if entry.reason else entry.state.lower()
            raise Unavailable(f"model '{name}' is not loaded ({why})")
        if version and version != model.version:
            raise NotFound(f"model '{name}' has no version '{version}' (serving version {model.version})")
        return model, batcher

    def load_blocking(self, entry: Entry, uri: str | None = None, retry_now: bool = True) -> bool:
        """Fetch, build and warm the entry's current version, then swap it in. False: unchanged,
        or (``retry_now`` False, the poller) the version failed last time and its wait has not
        passed (``failed_versions``)."""
        with entry.lock:
            try:
                return self._load_locked(entry, uri, retry_now)
            except Exception as err:  # keep serving the old version (if any)
                self._failed(entry, err)
                raise

    def _load_locked(self, entry: Entry, uri: str | None, retry_now: bool) -> bool:
        """``load_blocking`` with the entry's load lock held."""
        if not entry.wanted:
            return False  # unloaded since this load was asked for
        if uri is not None and uri != entry.source.uri:
            entry.source = self._cached(entry.name, source_for(uri))
            # another source's version numbers say nothing of this one's: v3 of models:/b is
            # not the v3 of models:/a being served, nor the one that failed
            entry.fingerprint, entry.failed = None, None
        fingerprint = entry.source.fingerprint()
        if entry.model is not None and fingerprint == entry.fingerprint:
            self._noted(entry, getattr(entry.source, "note", ""))
            return False
        if not retry_now and entry.failed is not None and entry.failed.held_back(fingerprint):
            return False  # its last failure stays the entry's reason
        try:
            return self._swap_in(entry, fingerprint)
        except Exception:
            entry.failed = failed_again(entry.failed, fingerprint, self.first_retry_s)
            raise

    def _noted(self, entry: Entry, note: str) -> None:
        """The served version is current: its reason is the source's note (an edge cache serving
        through an outage), logged once per outage, not every round."""
        with entry.swap:
            if not entry.wanted or note == entry.reason:
                return
            if note:
                log.warning("%s: %s", entry.name, note)
            entry.reason = note

    def _failed(self, entry: Entry, err: Exception) -> None:
        """The entry's state after a failed load; logged once per distinct problem, not every
        round. An entry unloaded meanwhile keeps its ``unloaded``."""
        with entry.swap:
            if not entry.wanted:
                return
            verb = "reload" if entry.model is not None else "load"
            reason = f"{verb} failed: {err}"
            if reason != entry.reason:
                log.warning("%s of %s failed: %s", verb, entry.name, err)
            entry.state, entry.reason = ("READY" if entry.model else "UNAVAILABLE"), reason

    def _swap_in(self, entry: Entry, fingerprint: str) -> bool:
        """Fetch, build and warm ``fingerprint``'s version of the entry (its lock held) and serve
        it, unless the entry was unloaded meanwhile (then the new version and its download go)."""
        with entry.swap:
            if entry.model is None:
                entry.state = "LOADING"
        fetched = entry.source.fetch(fingerprint)
        version = fetched.version or str(entry.loads + 1)
        with dropped_on_failure(fetched.scratch):  # a broken version: its download goes now
            model = LoadedModel(
                entry.name,
                version,
                entry.source.uri,
                fetched.onnx_path,
                self.session_opts,
                fetched.profile_path,
                self.drift_window,
            )
            model.warm_up()
            batcher = Batcher(
                model, self.max_batch_size, self.max_queue_delay_s, self.executor, self.on_batch
            )
        entry.failed = None  # the version itself is good, served or not
        with entry.swap:
            if not entry.wanted:  # unloaded while this version was fetched and built
                stale, served = fetched.scratch, False
            else:
                entry.model, entry.batcher = model, batcher  # requests read these two together
                entry.fingerprint, entry.state = fetched.fingerprint or fingerprint, "READY"
                entry.reason = getattr(entry.source, "note", "")
                entry.loads += 1
                # the session holds the model in memory: the previous download can go
                stale, entry.scratch, served = entry.scratch, fetched.scratch, True
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
        if not served:
            log.info("%s was unloaded while version %s loaded: not served", entry.name, version)
            return False
        if isinstance(entry.source, CachedSource):
            entry.source.keep(fetched, fingerprint, version)
        log.info("serving %s version %s from %s", entry.name, version, entry.source.uri)
        return True

    async def load(self, name: str, uri: str | None = None) -> Entry:
        """Load (or reload) a model by name; a name not served yet needs a ``uri``."""
        source = self.check_source(uri) if uri is not None else None
        entry = self.entries.get(name)
        if entry is None:
            if source is None:
                raise NotFound(f"unknown model '{name}': give parameters.uri to load a new one")
            problem = name_problem(name)  # a new name becomes a cache folder and a metrics label
            if problem is not None:
                raise BadRequest(f"model name {name!r} {problem}: give a name such as 'fraud' or 'wine-v2'")
            entry = self._add(name, source)
        with entry.swap:
            entry.wanted = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.loader, self.load_blocking, entry, uri)
        except Exception as err:  # the entry's state and reason are set (``_failed``)
            raise Unavailable(f"model '{name}' failed to load from {entry.source.uri}: {err}") from err
        return entry

    def unload(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        with entry.swap:  # a load running now sees ``wanted`` False and serves nothing
            entry.model, entry.batcher, entry.fingerprint = None, None, None
            entry.state, entry.reason, entry.wanted = "UNAVAILABLE", "unloaded", False
            scratch, entry.scratch = entry.scratch, None  # its download: the session is gone with it
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def all_ready(self) -> bool:
        """Every model that should be served is loaded (the server's readiness)."""
        return all(e.model is not None for e in list(self.entries.values()) if e.wanted)

    def index(self) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "version": e.model.version if e.model else "",
                "state": e.state,
                "reason": e.reason,
            }
            for e in self.entries.values()
        ]

    async def poll(self, seconds: float) -> None:
        """Reload every model whose source moved, and load the ones still missing (a registry alias
        that does not exist yet, a file not written yet); runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(seconds)
            for entry in list(self.entries.values()):
                if not entry.wanted:
                    continue
                try:
                    await loop.run_in_executor(self.loader, self.load_blocking, entry, None, False)
                except Exception:  # logged and kept as its reason (``_failed``); retry next round
                    continue

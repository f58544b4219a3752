"""The last good version of each registry-followed model, kept on local disk.

An edge box follows a central registry it cannot always reach. ``CachedSource`` wraps the
registry source: every version that loaded and warmed up is copied to ``CACHE/NAME/v-VERSION/``
(the folder that holds its model.onnx, whole: a model saved with external data, as MLflow's
``log_model`` does by default, needs its weight files beside it) and ``CACHE/NAME/current.json``
names it (written with a rename, so a reader sees the old pointer
or the new one). When the registry cannot be asked, the fingerprint is the cached version's, so:

- a running server keeps serving what it has and reports why in its repository index;
- a server started while the registry is unreachable loads the cached copy and turns ready;
- once the registry answers again, the next poll compares its champion with the cached one and
  the usual hot reload catches up.

A version already in the cache is loaded from it, not downloaded again (registry versions never
change once registered). Replicas of one server share the folder: each writes under its own
temporary name and renames; the loser of a race drops its copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from appliance.workloads.serving.sources import MODEL_FILE, PROFILE_FILE, Fetched, Source, dropped_on_failure

log = logging.getLogger(__name__)
CURRENT = "current.json"


def _folder_name(fingerprint: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in fingerprint)
    return f"v-{safe}"


def _copy_version(fetched: Fetched, dest: Path) -> None:
    """The folder holding the version's model.onnx into ``dest`` as ``model.onnx`` with every
    file and folder beside it (external data files, which ONNX Runtime finds relative to the
    model), and its drift profile. Plain files only: a link in a download is not followed."""
    source = fetched.onnx_path.parent
    shutil.copytree(
        source,
        dest,
        dirs_exist_ok=True,
        copy_function=shutil.copyfile,
        ignore=lambda folder, names: [n for n in names if os.path.islink(os.path.join(folder, n))],
    )
    if fetched.onnx_path.name != MODEL_FILE:
        os.replace(dest / fetched.onnx_path.name, dest / MODEL_FILE)
    if fetched.profile_path is not None and fetched.profile_path.parent != source:
        shutil.copyfile(fetched.profile_path, dest / PROFILE_FILE)


class CachedSource(Source):
    """A source whose last good version survives registry outages and restarts."""

    def __init__(self, inner: Source, root: Path) -> None:
        super().__init__(inner.uri)
        self.inner = inner
        self.root = root
        self.note = ""
        """Empty while the source answers; else why the cached version is served."""

    @property
    def location(self) -> str:
        return self.inner.location

    def default_name(self) -> str:
        return self.inner.default_name()

    def cached(self) -> dict[str, Any] | None:
        """The cached version of this source (``fingerprint``, ``version``, ``folder``), or None
        when there is none, it belongs to another URI or its files are gone."""
        try:
            meta = json.loads((self.root / CURRENT).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("uri") != self.uri:
            return None
        folder = self.root / str(meta.get("folder", ""))
        if not (folder / MODEL_FILE).is_file():
            return None
        return meta

    def fingerprint(self) -> str:
        try:
            fingerprint = self.inner.fingerprint()
        except Exception as err:
            meta = self.cached()
            if meta is None:
                raise
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            status = getattr(err, "status", None)  # a registry that answered, and said no
            trouble = "refused" if isinstance(status, int) and 400 <= status < 500 else "unreachable"
            self.note = f"source {trouble} ({first}); serving the cached version {meta['version']}"
            return str(meta["fingerprint"])
        self.note = ""
        return fingerprint

    def fetch(self, fingerprint: str) -> Fetched:
        meta = self.cached()
        if meta is not None and meta["fingerprint"] == fingerprint:
            folder = self.root / meta["folder"]
            profile = folder / PROFILE_FILE
            return Fetched(folder / MODEL_FILE, profile if profile.is_file() else None, meta["version"])
        return self.inner.fetch(fingerprint)

    def keep(self, fetched: Fetched, fingerprint: str, version: str) -> None:
        """Record a version that loaded and warmed up as the last good one. A failure to write
        (a full disk) is logged, never raised: the version is served all the same."""
        try:
            self._keep(fetched, fingerprint, version)
        except OSError as err:
            log.warning("could not cache %s version %s in %s: %s", self.uri, version, self.root, err)

    def _keep(self, fetched: Fetched, fingerprint: str, version: str) -> None:
        name = _folder_name(fingerprint)
        folder = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        if fetched.onnx_path.parent != folder and not (folder / MODEL_FILE).is_file():
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            with dropped_on_failure(tmp):  # a full disk: no half copy left for each version
                _copy_version(fetched, tmp)
            try:
                os.rename(tmp, folder)
            except OSError:  # another replica put the same version there first
                shutil.rmtree(tmp, ignore_errors=True)
                if not (folder / MODEL_FILE).is_file():
                    raise
        previous = self.cached()
        meta = {"uri": self.uri, "fingerprint": fingerprint, "version": version, "folder": name}
        tmp_meta = self.root / f".{CURRENT}.{os.getpid()}"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, self.root / CURRENT)
        # the current version and the one before it (another replica may still be loading it)
        keep = {name, previous["folder"] if previous else name}
        for old in self.root.glob("v-*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        log.info("cached %s version %s in %s", self.uri, version, folder)

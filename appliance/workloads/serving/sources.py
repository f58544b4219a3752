"""Where a model comes from: an MLflow registry alias, an S3 URI, or a local path.

Each source answers two questions: ``fingerprint()`` (cheap: has it moved since we loaded it?)
and ``fetch()`` (download it into a local folder holding model.onnx and, when present,
drift_profile.json). The hot-reload poller only needs those two, whatever the source.
boto3 is imported lazily: a server for local files never pays its import cost. MLflow is never
imported here: the registry is asked, and a version fetched, over its REST API
(``registry_client``; MLflow's client only in a child process, for artifacts kept elsewhere), so
a server following an alias holds none of MLflow's memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.workloads.serving import registry_client
from appliance.workloads.serving.downloads import new_download
from appliance.workloads.serving.onnx_external import external_locations

MODEL_FILE = "model.onnx"
PROFILE_FILE = "drift_profile.json"


@dataclass(frozen=True)
class Fetched:
    """A model on local disk: the ONNX file, its drift profile (or None), and a version label."""

    onnx_path: Path
    profile_path: Path | None
    version: str | None  # None: the repository numbers it
    scratch: Path | None = None  # a download folder to delete once the version is replaced
    fingerprint: str | None = None
    """What the source's ``fingerprint`` will say of this version from now on, where the fetch
    learnt more than the fingerprint asked for knew (an S3 model's external data files)."""


class Source:
    """Base: a model location given on the command line or to the load endpoint."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.stopping = threading.Event()
        """The model server's stop (set by its repository): a registry download gives up."""

    @property
    def location(self) -> str:
        """What identifies the location, for comparing two spellings of it (the repository API
        may load only from the sources the server was started with)."""
        return self.uri

    def default_name(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def fetch(self, fingerprint: str) -> Fetched:
        raise NotImplementedError


class LocalSource(Source):
    """A local model.onnx file, or a folder holding one; fingerprint is mtime and size (of its
    external data files too).

    A path that does not exist yet (a server waiting for its model) is a folder unless it names an
    ``.onnx`` file, so the folder a user fills later is watched for its model.onnx."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        path = Path(uri.removeprefix("file://")).expanduser()
        self.onnx = path if path.is_file() or path.suffix == ".onnx" else path / MODEL_FILE
        self.external: list[str] = []
        """The external data files the model named when last fetched (see ``S3Source.external``)."""

    @property
    def location(self) -> str:
        return str(self.onnx.resolve())

    def default_name(self) -> str:
        return self.onnx.parent.name if self.onnx.name == MODEL_FILE else self.onnx.stem

    def fingerprint(self) -> str:
        return self._stats(self.external)

    def _stats(self, external: list[str]) -> str:
        """mtime and size of the model file and of its external data files, joined."""
        files = [self.onnx, *(self.onnx.parent / location for location in external)]
        return "+".join(f"{st.st_mtime_ns}:{st.st_size}" for st in (f.stat() for f in files))

    def fetch(self, fingerprint: str) -> Fetched:
        external = external_locations(self.onnx)  # new weights under the same name reload it too
        self.external = external
        profile = self.onnx.parent / PROFILE_FILE
        found = self._stats(external) if external else None
        return Fetched(self.onnx, profile if profile.exists() else None, None, fingerprint=found)


class MlflowSource(Source):
    """``models:/NAME@ALIAS`` (follows the alias) or ``models:/NAME/VERSION`` (fixed)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        ref = uri.removeprefix("models:/")
        self.alias: str | None = None
        self.version: str | None = None
        if "@" in ref:
            self.model, self.alias = ref.split("@", 1)
        elif "/" in ref:
            self.model, self.version = ref.split("/", 1)
        else:
            raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")

    def default_name(self) -> str:
        return self.model

    def fingerprint(self) -> str:
        if self.version is not None:
            return self.version
        assert self.alias is not None
        return registry_client.alias_version(self.model, self.alias, stopping=self.stopping)

    def fetch(self, fingerprint: str) -> Fetched:
        dest = new_download(f"{self.model}-v{fingerprint}-")
        with dropped_on_failure(dest):
            folder = registry_client.download(self.model, fingerprint, dest, stopping=self.stopping)
            onnx = folder / MODEL_FILE
            if not onnx.exists():
                found = sorted(folder.rglob(MODEL_FILE))
                if not found:
                    raise FileNotFoundError(f"{self.uri} version {fingerprint} holds no {MODEL_FILE}")
                onnx = found[0]
        profile = onnx.parent / PROFILE_FILE
        return Fetched(onnx, profile if profile.exists() else None, fingerprint, dest)


class S3Source(Source):
    """``s3://BUCKET/KEY`` of a model.onnx file or of a prefix holding one (data connection env)."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        self.bucket = bucket
        key = key.strip("/")
        self.key = key if key.endswith(".onnx") else f"{key}/{MODEL_FILE}".lstrip("/")
        self.folder = self.key.rsplit("/", 1)[0] + "/" if "/" in self.key else ""
        self.profile_key = self.folder + PROFILE_FILE
        self.external: list[str] = []
        """The external data files (relative to the model) the last fetched model named: their
        objects are part of the version, so a new weights file under the same name reloads it."""

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=os.environ.get("AWS_S3_ENDPOINT") or None,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    def default_name(self) -> str:
        parts = self.key.split("/")
        return parts[-2] if parts[-1] == MODEL_FILE and len(parts) > 1 else parts[-1].removesuffix(".onnx")

    def fingerprint(self) -> str:
        return self._tags(self._client(), self.external)

    def _tags(self, client: Any, external: list[str]) -> str:
        """The ETags of the model object and of its external data objects, joined."""
        keys = [self.key, *(self.folder + location for location in external)]
        return "+".join(str(client.head_object(Bucket=self.bucket, Key=k)["ETag"]).strip('"') for k in keys)

    def fetch(self, fingerprint: str) -> Fetched:
        client = self._client()
        folder = new_download("s3-")
        onnx = folder / MODEL_FILE
        with dropped_on_failure(folder):
            client.download_file(self.bucket, self.key, str(onnx))
            external = external_locations(onnx)  # a model saved with external data: its files too
            for location in external:
                (folder / location).parent.mkdir(parents=True, exist_ok=True)
                client.download_file(self.bucket, self.folder + location, str(folder / location))
            if external:
                fingerprint = self._tags(client, external)
        self.external = external
        profile: Path | None = folder / PROFILE_FILE
        try:
            client.download_file(self.bucket, self.profile_key, str(profile))
        except Exception:  # no profile next to the model: serve without drift statistics
            profile = None
        return Fetched(onnx, profile, None, folder, fingerprint)


@contextlib.contextmanager
def dropped_on_failure(scratch: Path | None) -> Iterator[None]:
    """A download folder that goes when what follows fails (its download, or building the
    model from it): the poller fetches that version again next round, and each round's copy
    would otherwise stay on disk."""
    try:
        yield
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise


def source_for(uri: str) -> Source:
    """The Source for a URI, by its scheme."""
    if uri.startswith("models:/"):
        return MlflowSource(uri)
    if uri.startswith("s3://"):
        return S3Source(uri)
    return LocalSource(uri)

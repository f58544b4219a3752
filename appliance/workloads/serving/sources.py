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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.workloads.serving import registry_client
from appliance.workloads.serving.downloads import new_download

MODEL_FILE = "model.onnx"
PROFILE_FILE = "drift_profile.json"


@dataclass(frozen=True)
class Fetched:
    """A model on local disk: the ONNX file, its drift profile (or None), and a version label."""

    onnx_path: Path
    profile_path: Path | None
    version: str | None  # None: the repository numbers it
    scratch: Path | None = None  # a download folder to delete once the version is replaced


class Source:
    """Base: a model location given on the command line or to the load endpoint."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

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
    """A local model.onnx file, or a folder holding one; fingerprint is mtime and size.

    A path that does not exist yet (a server waiting for its model) is a folder unless it names an
    ``.onnx`` file, so the folder a user fills later is watched for its model.onnx."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        path = Path(uri.removeprefix("file://")).expanduser()
        self.onnx = path if path.is_file() or path.suffix == ".onnx" else path / MODEL_FILE

    @property
    def location(self) -> str:
        return str(self.onnx.resolve())

    def default_name(self) -> str:
        return self.onnx.parent.name if self.onnx.name == MODEL_FILE else self.onnx.stem

    def fingerprint(self) -> str:
        st = self.onnx.stat()
        return f"{st.st_mtime_ns}:{st.st_size}"

    def fetch(self, fingerprint: str) -> Fetched:
        profile = self.onnx.parent / PROFILE_FILE
        return Fetched(self.onnx, profile if profile.exists() else None, None)


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
        return registry_client.alias_version(self.model, self.alias)

    def fetch(self, fingerprint: str) -> Fetched:
        dest = new_download(f"{self.model}-v{fingerprint}-")
        with dropped_on_failure(dest):
            folder = registry_client.download(self.model, fingerprint, dest)
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
        self.profile_key = (
            self.key.rsplit("/", 1)[0] + "/" + PROFILE_FILE if "/" in self.key else PROFILE_FILE
        )

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
        head = self._client().head_object(Bucket=self.bucket, Key=self.key)
        return str(head["ETag"]).strip('"')

    def fetch(self, fingerprint: str) -> Fetched:
        client = self._client()
        folder = new_download("s3-")
        onnx = folder / MODEL_FILE
        with dropped_on_failure(folder):
            client.download_file(self.bucket, self.key, str(onnx))
        profile: Path | None = folder / PROFILE_FILE
        try:
            client.download_file(self.bucket, self.profile_key, str(profile))
        except Exception:  # no profile next to the model: serve without drift statistics
            profile = None
        return Fetched(onnx, profile, None, folder)


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

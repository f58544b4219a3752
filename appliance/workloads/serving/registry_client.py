"""The model server's questions to the MLflow registry, without MLflow in the server.

Why: importing MLflow's client costs a model server about 140 MB resident (it brings pandas,
pyarrow and scipy), in every replica, to ask one question each poll: which version does an alias
name? That is one call of MLflow's REST API (``GET /api/2.0/mlflow/registered-models/alias``),
asked here with the standard library. A new version, fetched only when the answer changes, is
listed and downloaded over the same API when it lies in the registry's own artifact store (the
appliance's MLflow serves its artifacts); from anywhere else MLflow's own ``download_artifacts``
fetches it in a child process (``registry_fetch``) that exits, so none of MLflow stays resident.

Both read the environment as MLflow's client does: ``MLFLOW_TRACKING_URI``; basic auth from
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or a bearer ``MLFLOW_TRACKING_TOKEN``;
``MLFLOW_TRACKING_SERVER_CERT_PATH`` (the CA an https registry is checked against, an edge box's
``--registry-ca-file``) or ``MLFLOW_TRACKING_INSECURE_TLS=true``; and the request settings
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (seconds), ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (retries of an unreachable registry or a 5xx answer; a
4xx is final). The answer is bounded (``MAX_ANSWER_BYTES``), and a redirect is not followed
(it would carry the credentials elsewhere).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from http.client import HTTPResponse
from pathlib import Path
from typing import BinaryIO, TypeVar

MAX_ANSWER_BYTES = 1 << 20
"""An alias lookup answers a few hundred bytes; more than this is not a registry's answer."""
MAX_VERSION_BYTES = 8 << 30
"""The most one version's files may hold in all, 8 GiB: checked against the sizes its listing gives
before a byte is fetched, and against the bytes as they come for a file listed without a size. A
served version is an ONNX model (protobuf caps one at 2 GiB; larger ones keep external data
files) and a few small files, so four times that cap is room for any real one, while a registry
that lists or sends without end is stopped before it fills the server's disk."""
FETCH_TIMEOUT_S = 1800.0
"""How long the download of one version may take in all, whichever way: over the REST API (every
request, read and retry of the version together, checked after each socket read, which itself
waits at most the request timeout) or by MLflow's client in the child (stopped after it). The
request timeout bounds one read only: a registry sending a byte every 29 s would never trip it.
Half an hour carries ``MAX_VERSION_BYTES`` at about 5 MiB/s, and a real model (tens to hundreds of
MB) over a far slower link."""
ALIAS_DEADLINE_S = 120.0
"""How long asking which version an alias names may take in all (its retries too): the poller
holds the model's lock meanwhile, and the answer is a few hundred bytes."""
MAX_FILES, MAX_DEPTH, CHUNK_BYTES = 10_000, 8, 1 << 20
"""A model version's artifacts: a handful of files (model, profile, MLmodel, environment files)."""
PROXIED_PREFIX, ARTIFACTS_API = "mlflow-artifacts:", "/api/2.0/mlflow-artifacts/artifacts"
"""The registry's own artifact store (``--serve-artifacts``) and the REST API that serves it."""
TIMEOUT_S, RETRIES = 30.0, 2
"""Without MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES: the poller asks again next round anyway."""

_T = TypeVar("_T")


class RegistryError(Exception):
    """The registry could not be asked, or said no; the message says which and why, and
    ``status`` the HTTP status of a refusal (None: not reached, or no usable answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A registry answers where it is asked: a redirect would carry the account's credentials
    to wherever it points, so it is an error (the 3xx, named) instead of a second request."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return max(0.0, float(env.get(name) or default))
    except ValueError:
        return default


def _tls(env: Mapping[str, str]) -> ssl.SSLContext:
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)


def _headers(env: Mapping[str, str]) -> dict[str, str]:
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    token = env.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class _Registry:
    """One registry as MLflow's client reaches it: base URL, account, TLS, timeout and retries;
    with ``deadline_s``, every request made through it ends within that many seconds in all."""

    def __init__(
        self,
        env: Mapping[str, str],
        what: str,
        deadline_s: float | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.base = (env.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise RegistryError(
                f"MLFLOW_TRACKING_URI is {self.base or 'unset'}: {what} needs an http(s) registry"
            )
        self.headers = _headers(env)
        self.timeout = _number(env, "MLFLOW_HTTP_REQUEST_TIMEOUT", TIMEOUT_S)
        self.retries = int(_number(env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", RETRIES))
        self.backoff = _number(env, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1.0)
        self.deadline_s = deadline_s
        self.deadline = None if deadline_s is None else time.monotonic() + deadline_s
        self.stopping = stopping or threading.Event()
        """Set when the model server stops: what is in progress gives up at its next read (at most
        the request timeout away) or retry pause, instead of holding the process's exit (its
        threads are joined there) until the deadline."""
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if self.base.startswith("https://"):
            handlers.append(urllib.request.HTTPSHandler(context=_tls(env)))
        self.opener = urllib.request.build_opener(*handlers)

    def get(self, path: str, what: str) -> bytes:
        """``GET base + path``: the answer, at most ``MAX_ANSWER_BYTES``."""
        return self._ask(path, what, lambda answer: self._answer(answer, what))

    def save(self, path: str, what: str, file: Path, folder: Path, size: int | None, limit: int) -> int:
        """``GET base + path`` streamed into ``file`` (new, in the download folder ``folder``):
        exactly ``size`` bytes when the listing gave it, else at most ``limit``; returns how
        many. A failure to write it is this host's (``DownloadDiskError``), not asked again."""
        with _on_this_host(file, folder, what), open(file, "xb") as into:
            return self._ask(path, what, lambda answer: self._copy(answer, into, size, limit, what, folder))

    def _ask(self, path: str, what: str, take: Callable[[HTTPResponse], _T]) -> _T:
        """The answer to ``GET base + path``, as ``take`` reads it. A 4xx is final; a 5xx, an
        unreachable registry or an answer that breaks off (a reset, a timeout, a chunked answer
        cut short) is asked again as MLflow's settings say, within the deadline."""
        request = urllib.request.Request(self.base + path, headers=self.headers)
        for attempt in range(self.retries + 1):
            opened = False
            try:
                with self.opener.open(request, timeout=self._left(what)) as answer:
                    opened = True
                    return take(answer)
            except urllib.error.HTTPError as err:
                if err.code < 500 or attempt == self.retries:
                    raise RegistryError(f"{self.base}: {what}: {_refusal(err)}", err.code) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                if attempt == self.retries:
                    reason = getattr(err, "reason", None) or err
                    if opened:
                        raise RegistryError(f"{self.base}: {what}: the answer broke off: {reason}") from None
                    raise RegistryError(f"{self.base} unreachable for {what}: {reason}") from None
            pause = self.backoff * 2**attempt
            if self.deadline is not None and time.monotonic() + pause >= self.deadline:
                raise self._late(what)
            if self.stopping.wait(pause):
                raise _stopping(what)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _left(self, what: str) -> float:
        """The socket timeout for the next wait: the request timeout, or less as the deadline nears."""
        if self.stopping.is_set():
            raise _stopping(what)
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._late(what)
        return min(self.timeout, left)

    def _late(self, what: str) -> RegistryError:
        return RegistryError(
            f"{self.base}: {what}: not done after {self.deadline_s:g} s, the most one version's "
            "download may take (a registry or link this slow is given up on)"
        )

    def _answer(self, answer: HTTPResponse, what: str) -> bytes:
        body = bytearray()
        while chunk := answer.read1(CHUNK_BYTES):  # one socket read at most: the deadline holds
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise RegistryError(f"{self.base}: the answer for {what} is over {MAX_ANSWER_BYTES} B")
            self._left(what)
        _whole(answer)
        return bytes(body)

    def _copy(
        self, answer: HTTPResponse, into: BinaryIO, size: int | None, limit: int, what: str, folder: Path
    ) -> int:
        """The file's bytes, checked against the size its listing gave (neither more nor fewer)
        or, without one, against the version's bytes left (``limit``); the deadline after each read."""
        path = Path(into.name)
        with _on_this_host(path, folder, what):
            into.seek(0)  # an earlier attempt's bytes go
            into.truncate()
        written = 0
        while chunk := answer.read1(CHUNK_BYTES):  # one socket read at most: the deadline holds
            written += len(chunk)
            if size is not None and written > size:
                raise RegistryError(f"{self.base}: {what}: more than the {size} B its listing gave")
            if size is None and written > limit:
                raise RegistryError(
                    f"{self.base}: {what}: listed without a size, and over the {limit} B left of the "
                    f"{MAX_VERSION_BYTES} B a version may hold"
                )
            with _on_this_host(path, folder, what):
                into.write(chunk)
            self._left(what)
        _whole(answer)
        if size is not None and written != size:
            raise RegistryError(f"{self.base}: {what}: {written} B of the {size} B its listing gave")
        return written


def _stopping(what: str) -> RegistryError:
    return RegistryError(f"{what}: given up, the model server is stopping")


def _whole(answer: HTTPResponse) -> None:
    """An answer that ended before its Content-Length broke off (``http.client`` says nothing)."""
    short = getattr(answer, "length", None)
    if short:
        raise ConnectionError(f"the connection closed {short} B before the end of the answer")


class DownloadDiskError(Exception):
    """Writing a download on this host failed (a full disk, say): the registry is not at fault
    and is not asked again; the message names the file, the download folder and what to do."""


@contextlib.contextmanager
def _on_this_host(path: Path, folder: Path, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = (
            f"free disk space where the download folder {folder} lies"
            if full
            else f"check that the download folder {folder} can be written"
        )
        raise DownloadDiskError(
            f"{what}: writing {path} failed on this host, not at the registry ({err.strerror or err}): {fix}"
        ) from None


def alias_version(
    model: str, alias: str, env: Mapping[str, str] | None = None, stopping: threading.Event | None = None
) -> str:
    """The version ``model@alias`` names in the registry at ``MLFLOW_TRACKING_URI``."""
    what = f"models:/{model}@{alias}"
    registry = _Registry(os.environ if env is None else env, what, ALIAS_DEADLINE_S, stopping)
    query = urllib.parse.urlencode({"name": model, "alias": alias})
    body = registry.get(f"/api/2.0/mlflow/registered-models/alias?{query}", what)
    return _version_of(body, registry.base, model, alias)


def _refusal(err: urllib.error.HTTPError) -> str:
    """HTTP code and MLflow's own error (``error_code``: ``message``) when it sent one."""
    try:
        doc = json.loads(err.read(MAX_ANSWER_BYTES))
        said = f"{doc.get('error_code', '')}: {doc.get('message', '')}".strip(": ")
    except (OSError, ValueError, AttributeError):
        said = ""
    return f"HTTP {err.code}" + (f" ({said})" if said else f" ({err.reason})")


def _version_of(body: bytes, base: str, model: str, alias: str) -> str:
    try:
        version = json.loads(body)["model_version"]["version"]
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{base}: no model version in the answer for models:/{model}@{alias}") from None
    if not isinstance(version, str | int) or not str(version).isdigit():
        raise RegistryError(f"{base}: models:/{model}@{alias} names version {version!r}, not a number")
    return str(version)


def download(
    model: str,
    version: str,
    dest: Path,
    env: Mapping[str, str] | None = None,
    stopping: threading.Event | None = None,
) -> Path:
    """Version ``version`` of ``model`` downloaded into ``dest``; returns the folder it wrote.

    The registry says where the version's files are (``get-download-uri``). Where that is the
    registry's own artifact store (``mlflow-artifacts:/PATH``, what the appliance's MLflow gives,
    ``--serve-artifacts``), the files are listed and fetched over the same REST API, with the
    same account: as fast as MLflow's client in the server was, and nothing imported. Anywhere
    else (an external MLflow whose artifacts are in S3, say) MLflow's own ``download_artifacts``
    does it in a child process, so its imports leave with it."""
    env = os.environ if env is None else env
    what = f"models:/{model}/{version}"
    if version.isdigit():
        registry = _Registry(env, what, FETCH_TIMEOUT_S, stopping)
        query = urllib.parse.urlencode({"name": model, "version": version})
        body = registry.get(f"/api/2.0/mlflow/model-versions/get-download-uri?{query}", what)
        try:
            uri = json.loads(body)["artifact_uri"]
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"{registry.base}: no artifact_uri in the answer for {what}") from None
        if (
            isinstance(uri, str)
            and uri.startswith(PROXIED_PREFIX)
            and not uri.startswith(f"{PROXIED_PREFIX}//")
        ):
            _fetch_tree(registry, uri.removeprefix(PROXIED_PREFIX).strip("/"), dest, what)
            return dest
    return _download_with_mlflow(model, version, dest, stopping or threading.Event())


def _fetch_tree(registry: _Registry, root: str, dest: Path, what: str) -> None:
    """Every file under ``root`` of the registry's artifact store, into ``dest`` (same layout).

    Bounded: at most ``MAX_FILES`` entries and ``MAX_DEPTH`` folders deep; each name the listing
    gives is one plain path component (no separator, no ``..``), so nothing is written outside
    ``dest``; the whole tree is listed first, and its sizes together are at most
    ``MAX_VERSION_BYTES`` before a file is fetched; each file is exactly the size its listing
    gave. MLflow lists an empty file without a size (``FileInfo.to_proto`` leaves a 0 out), as
    it does whatever its store gives none for: such a file may hold what the listed ones leave
    of ``MAX_VERSION_BYTES``, all of them together."""
    folders, files = _list_tree(registry, root, what)
    listed = sum(size for _, _, size in files if size is not None)
    if listed > MAX_VERSION_BYTES:
        raise RegistryError(
            f"{registry.base}: {what} lists {listed} B of files, over the {MAX_VERSION_BYTES} B "
            "a version may hold"
        )
    spare = MAX_VERSION_BYTES - listed  # for the files listed without a size, together
    for folder in folders:
        with _on_this_host(dest / folder, dest, what):
            (dest / folder).mkdir()
    for remote, local, size in files:
        path = f"{ARTIFACTS_API}/{urllib.parse.quote(remote)}"
        got = registry.save(path, f"{what} ({remote})", dest / local, dest, size, spare)
        if size is None:
            spare -= got


def _list_tree(
    registry: _Registry, root: str, what: str
) -> tuple[list[Path], list[tuple[str, Path, int | None]]]:
    """The folders (parents first) and files (remote path, local path, listed size) under
    ``root``, relative to it locally; refused past the bounds ``_fetch_tree`` names."""
    folders: list[Path] = []
    files: list[tuple[str, Path, int | None]] = []
    pending: list[tuple[str, Path, int]] = [(root, Path(), 0)]
    while pending:
        folder, local, depth = pending.pop()
        listed = registry.get(f"{ARTIFACTS_API}?{urllib.parse.urlencode({'path': folder})}", what)
        try:
            given = json.loads(listed).get("files", [])
            entries = [(str(f["path"]), bool(f.get("is_dir")), f.get("file_size")) for f in given]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(
                f"{registry.base}: {what}: the artifact listing of {folder} is not MLflow's"
            ) from None
        if len({name for name, _, _ in entries}) != len(entries):
            raise RegistryError(f"{registry.base}: {what}: the listing of {folder} names a file twice")
        for name, is_dir, size in entries:
            if len(folders) + len(files) >= MAX_FILES:
                raise RegistryError(f"{registry.base}: {what} holds over {MAX_FILES} files")
            if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
                raise RegistryError(f"{registry.base}: {what}: the listing names {name!r}, not a file name")
            remote = f"{folder}/{name}"
            if is_dir:
                if depth + 1 > MAX_DEPTH:
                    raise RegistryError(f"{registry.base}: {what} is nested over {MAX_DEPTH} folders deep")
                folders.append(local / name)
                pending.append((remote, local / name, depth + 1))
            elif size is None:
                files.append((remote, local / name, None))
            elif (isinstance(size, int) and not isinstance(size, bool) and size >= 0) or (
                isinstance(size, str) and size.isascii() and size.isdigit()
            ):
                files.append((remote, local / name, int(size)))
            else:
                raise RegistryError(
                    f"{registry.base}: {what}: the listing gives {remote} the size {size!r}, not a "
                    "number of bytes"
                )
    return folders, files


def _download_with_mlflow(model: str, version: str, dest: Path, stopping: threading.Event) -> Path:
    """MLflow's own client, in a child process (its imports leave with it), killed when the
    server stops or the download outlasts ``FETCH_TIMEOUT_S``."""
    command = [sys.executable, "-m", "appliance.workloads.serving.registry_fetch", model, version, str(dest)]
    what = f"models:/{model}/{version}"
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        while True:
            try:
                out, err = child.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if stopping.is_set() or time.monotonic() > deadline:
                    child.kill()
                    child.communicate()
                    if stopping.is_set():
                        raise _stopping(what) from None
                    raise RegistryError(f"{what}: the download took over {FETCH_TIMEOUT_S:.0f} s") from None
    if child.returncode != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        raise RegistryError(f"{what}: {lines[-1] if lines else f'exit {child.returncode}'}")
    return Path(out.strip().splitlines()[-1])

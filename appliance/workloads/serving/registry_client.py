"""The model server's questions to the MLflow registry, without MLflow in the server.

Why: importing MLflow's client costs a model server about 140 MB resident (it brings pandas,
pyarrow and scipy), in every replica, to ask one question each poll: which version does an alias
name? That is one call of MLflow's REST API (``GET /api/2.0/mlflow/registered-models/alias``),
asked here with the standard library. Downloading a version, which happens only when the answer
changes, runs MLflow's own ``download_artifacts`` in a child process (``registry_fetch``) that
exits when done, so none of that stays resident either.

Both read the environment as MLflow's client does: ``MLFLOW_TRACKING_URI``; basic auth from
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or a bearer ``MLFLOW_TRACKING_TOKEN``;
``MLFLOW_TRACKING_SERVER_CERT_PATH`` (the CA an https registry is checked against, an edge box's
``--registry-ca-file``) or ``MLFLOW_TRACKING_INSECURE_TLS=true``; and the request settings
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (seconds), ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (retries of an unreachable registry or a 5xx answer; a
4xx is final). The answer is bounded (``MAX_ANSWER_BYTES``).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

MAX_ANSWER_BYTES = 1 << 20
"""An alias lookup answers a few hundred bytes; more than this is not a registry's answer."""
FETCH_TIMEOUT_S = 1800.0
"""How long a download of one version may take (a large model over a slow link)."""
TIMEOUT_S, RETRIES = 30.0, 2
"""Without MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES: the poller asks again next round anyway."""


class RegistryError(Exception):
    """The registry could not be asked, or said no; the message says which and why."""


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


def alias_version(model: str, alias: str, env: Mapping[str, str] | None = None) -> str:
    """The version ``model@alias`` names in the registry at ``MLFLOW_TRACKING_URI``."""
    env = os.environ if env is None else env
    base = (env.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RegistryError(
            f"MLFLOW_TRACKING_URI is {base or 'unset'}: models:/{model}@{alias} needs an http(s) registry"
        )
    query = urllib.parse.urlencode({"name": model, "alias": alias})
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/registered-models/alias?{query}", headers=_headers(env)
    )
    timeout = _number(env, "MLFLOW_HTTP_REQUEST_TIMEOUT", TIMEOUT_S)
    retries = int(_number(env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", RETRIES))
    backoff = _number(env, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1.0)
    context = _tls(env) if base.startswith("https://") else None
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
                body = answer.read(MAX_ANSWER_BYTES + 1)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise RegistryError(f"{base}: models:/{model}@{alias}: {_refusal(err)}") from None
        except (urllib.error.URLError, OSError) as err:
            if attempt == retries:
                reason = getattr(err, "reason", err)
                raise RegistryError(f"{base} unreachable for models:/{model}@{alias}: {reason}") from None
        time.sleep(backoff * 2**attempt)
    return _version_of(body, base, model, alias)


def _refusal(err: urllib.error.HTTPError) -> str:
    """HTTP code and MLflow's own error (``error_code``: ``message``) when it sent one."""
    try:
        doc = json.loads(err.read(MAX_ANSWER_BYTES))
        said = f"{doc.get('error_code', '')}: {doc.get('message', '')}".strip(": ")
    except (OSError, ValueError, AttributeError):
        said = ""
    return f"HTTP {err.code}" + (f" ({said})" if said else f" ({err.reason})")


def _version_of(body: bytes, base: str, model: str, alias: str) -> str:
    if len(body) > MAX_ANSWER_BYTES:
        raise RegistryError(f"{base}: the answer for models:/{model}@{alias} is over {MAX_ANSWER_BYTES} B")
    try:
        version = json.loads(body)["model_version"]["version"]
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{base}: no model version in the answer for models:/{model}@{alias}") from None
    if not isinstance(version, str | int) or not str(version).isdigit():
        raise RegistryError(f"{base}: models:/{model}@{alias} names version {version!r}, not a number")
    return str(version)


def download(model: str, version: str, dest: Path) -> Path:
    """Version ``version`` of ``model`` downloaded into ``dest`` by MLflow's own client, in a
    child process (its imports leave with it); returns the folder it wrote."""
    command = [sys.executable, "-m", "appliance.workloads.serving.registry_fetch", model, version, str(dest)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RegistryError(
            f"models:/{model}/{version}: the download took over {FETCH_TIMEOUT_S:.0f} s"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RegistryError(f"models:/{model}/{version}: {lines[-1] if lines else f'exit {done.returncode}'}")
    return Path(done.stdout.strip().splitlines()[-1])

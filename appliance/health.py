"""Health probes (http, tcp, command) and the wait for a service to turn healthy.

An http probe of a service that asks for basic auth on every endpoint (Prometheus, Alertmanager,
node exporter) sends its user and the password read from the secret file at probe time, so the
password is in no rendered service, plan or status output.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from appliance.stack import HealthCheck


def probe(check: HealthCheck, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """One probe: (healthy, what was seen)."""
    if check.http:
        try:
            headers = _headers(check)
        except OSError as err:
            return False, f"password file of {check.auth_user}: {err.strerror or err}"
        return _http(check.http, check.timeout, check.ca, headers)
    if check.tcp:
        host, _, port = check.tcp.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=check.timeout):
                return True, f"tcp {check.tcp} accepts connections"
        except OSError as err:
            return False, f"tcp {check.tcp}: {err.strerror or err}"
    assert check.command
    try:
        proc = subprocess.run(
            check.command,
            capture_output=True,
            text=True,
            timeout=max(check.timeout, 10),
            env=os.environ | (env or {}),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"health command failed: {err}"
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    return proc.returncode == 0, detail[-1] if detail else f"exit code {proc.returncode}"


def _headers(check: HealthCheck) -> dict[str, str]:
    """The probe's headers: basic auth when the service asks for it, its password read now."""
    headers = {"User-Agent": "appliance-health"}
    if check.auth_user:
        password = Path(check.auth_password_file or "").read_text().strip()
        token = base64.b64encode(f"{check.auth_user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


def _opener(url: str, ca: str | None) -> urllib.request.OpenerDirector:
    """No proxy; an ``https`` URL verified against the stack's own CA: a probe that accepted any
    certificate would call a gateway serving the wrong one healthy."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https://"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca)))
    return urllib.request.build_opener(*handlers)


FETCH_LIMIT = 4 << 20
"""The most ``fetch`` reads of a page (a metrics page is a few hundred KiB)."""


def fetch(url: str, check: HealthCheck) -> str:
    """Another page of a service, asked as its health probe asks (credentials, CA, timeout): the
    metrics page a reload is confirmed on. Raises OSError (urllib's errors among them)."""
    request = urllib.request.Request(url, headers=_headers(check))
    with _opener(url, check.ca).open(request, timeout=check.timeout) as response:
        return response.read(FETCH_LIMIT).decode(errors="replace")


def _http(
    url: str, timeout: float, ca: str | None = None, headers: dict[str, str] | None = None
) -> tuple[bool, str]:
    request = urllib.request.Request(url, headers=headers or {"User-Agent": "appliance-health"})
    try:
        opener = _opener(url, ca)
    except (OSError, ssl.SSLError) as err:
        return False, f"CA file {ca}: {err}"
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status < 400, f"GET {urlsplit(url).path} -> {response.status}"
    except urllib.error.HTTPError as err:
        return False, f"GET {urlsplit(url).path} -> {err.code}"
    except (OSError, urllib.error.URLError) as err:
        reason = getattr(err, "reason", err)
        return False, f"GET {url}: {reason}"

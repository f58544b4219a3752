"""The write gate: the one door through which edge boxes send samples to the central Prometheus.

Prometheus's own basic auth has no rule per path or per label, so an edge box whose account sat in
its ``web.yml`` could query every central series and write any series under any labels: another
box's name, or a drift statistic (``appliance_feature_psi``) for any model, which fires the
central drift alert and retrains that model. The gate takes that account's place. An edge box
sends its remote write here with its own account (``appliance-edge-NAME``); the gate

- checks the account before it reads the body (401 for anything else), and answers nothing but
  ``POST /api/v1/write`` (and ``GET /healthz``): the box can no longer query the centre;
- keeps only the series of the model server's metric families (``catalog.SERVING_METRICS``),
  dropping the rest of what the box's Prometheus holds (its own and its node exporter's);
- sets ``edge_box`` on every series to the name of the account that sent it, whatever the box
  wrote there, so no box writes under another's name or as the centre itself;
- for a box whose ``edge_boxes`` entry names its models, keeps only series of those models (a
  per-model family's series naming another model, or none where the server always names one, is
  left out): a box cannot write drift for a model it does not serve, and so cannot start that
  model's retraining;
- and sends the rewritten request on to the central Prometheus's receiver as the stack's own
  Prometheus user (the receiver's only account).

Limits: bodies up to ``MAX_BODY`` bytes (declared length, 413 past it) decoding to at most
``Limits.max_decoded_bytes``; series, labels and label sizes bounded (``remote_write_wire.Limits``);
``MAX_CONNECTIONS`` connections at once (503 past them, which the box's Prometheus retries); a
socket timeout for slow senders (``appliance.bounded_http``). A malformed body is a 400 naming
what is wrong, and none of its series is written (Prometheus drops a batch answered 4xx and
retries one answered 5xx, which is what the gate answers when the central Prometheus cannot be
reached).

A box named in ``edge_boxes`` without its models may still write serving series for any model,
under its own name; the central drift rules then see that box's name on them (``docs/cluster.md``,
"Edge boxes").
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bounded_http import BoundedHandler, BoundedHTTPServer
from appliance.mlflow_auth import EDGE_PREFIX
from appliance.monitoring.catalog import (
    MODEL_LABEL,
    SERVING_METRICS,
    SERVING_PER_MODEL,
    SERVING_UNNAMED_MODEL,
    series_names,
)
from appliance.monitoring.remote_write_wire import (
    Limits,
    WireError,
    read_write_request,
    snappy_decode,
    snappy_encode,
    write_request,
)

log = logging.getLogger("appliance.write_gate")

WRITE_PATH = "/api/v1/write"
BOX_LABEL = "edge_box"
MAX_BODY = 8 * 1024 * 1024
MAX_CONNECTIONS = 16
SOCKET_TIMEOUT = 15.0
UPSTREAM_TIMEOUT = 15.0
_NO_PASSWORD = "-" * 64
"""What an unknown user's password is compared with: no SHA-256 in hex is dashes."""


def password_digest(password: str) -> str:
    """What the accounts file holds for a password: its SHA-256. The passwords are 192 random
    bits (``appliance.secrets_store``), so no salt or slow hash adds anything to them."""
    return hashlib.sha256(password.encode()).hexdigest()


def accounts_file(credentials: dict[str, str], models: dict[str, list[str]] | None = None) -> str:
    """The gate's accounts file for ``credentials`` (edge account -> password) and ``models``
    (edge account -> the models it serves, for the boxes whose entry names them)."""
    digests = {user: password_digest(pw) for user, pw in sorted(credentials.items())}
    scopes = {user: sorted(names) for user, names in sorted((models or {}).items()) if user in credentials}
    return json.dumps({"accounts": digests, "models": scopes}, indent=2) + "\n"


class RequestRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Outcome:
    """What the gate did with one request."""

    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    """Series left out for their name (not a serving series), by series name."""
    foreign: dict[str, int] = field(default_factory=dict)
    """Series left out for their model (not one the box serves), by the model they named ("" for
    none)."""


def _series_of(families: frozenset[str]) -> frozenset[str]:
    """The series names of ``families`` (a histogram's ``_bucket``, ``_sum`` and ``_count``)."""
    return frozenset(series_names({name: SERVING_METRICS[name] for name in families}))


PER_MODEL_SERIES = _series_of(SERVING_PER_MODEL)
UNNAMED_MODEL_SERIES = _series_of(SERVING_UNNAMED_MODEL)


def rewrite(
    body: bytes, box: str, allowed: frozenset[str], limits: Limits, models: frozenset[str] | None = None
) -> tuple[bytes, Outcome]:
    """The snappy body to send on for ``box``'s request ``body``: only the allowed series, and
    with ``models`` only those of these models, each labelled ``edge_box=box``. Raises WireError on
    a malformed body."""
    series = read_write_request(snappy_decode(body, limits.max_decoded_bytes), limits)
    kept, dropped, foreign = [], Counter[str](), Counter[str]()
    for one in series:
        if one.name not in allowed:
            dropped[one.name] += 1
            continue
        if models is not None and one.name in PER_MODEL_SERIES:
            model = one.labels.get(MODEL_LABEL, "")
            unnamed_allowed = model == "" and one.name in UNNAMED_MODEL_SERIES
            if model not in models and not unnamed_allowed:
                foreign[model] += 1
                continue
        one.labels[BOX_LABEL] = box
        kept.append(one)
    return snappy_encode(write_request(kept)), Outcome(len(kept), dict(dropped), dict(foreign))


@dataclass(frozen=True)
class Upstream:
    """The central Prometheus's receiver and the account the gate writes with."""

    url: str
    user: str
    password_file: Path

    def send(self, body: bytes) -> None:
        """POST the rewritten body; RequestRefused(503) when Prometheus cannot take it now (the
        box retries), (400) when it refuses the samples themselves."""
        password = self.password_file.read_text().strip()
        token = base64.b64encode(f"{self.user}:{password}".encode()).decode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Basic {token}",
                "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=UPSTREAM_TIMEOUT) as answer:
                answer.read()
        except urllib.error.HTTPError as err:
            detail = err.read(512).decode(errors="replace").strip()
            if 400 <= err.code < 500 and err.code not in (401, 403, 429):
                raise RequestRefused(400, f"the central Prometheus refused the samples: {detail}") from err
            raise RequestRefused(503, f"the central Prometheus answered {err.code}: {detail}") from err
        except OSError as err:
            raise RequestRefused(503, f"the central Prometheus cannot be reached ({err})") from err


class GateServer(BoundedHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        accounts: dict[str, str],
        upstream: Upstream,
        limits: Limits | None = None,
        max_connections: int = MAX_CONNECTIONS,
        models: dict[str, frozenset[str]] | None = None,
    ) -> None:
        super().__init__(address, Handler, max_connections)
        self.accounts = accounts
        self.models = models or {}
        """Box name -> the models it serves, for the boxes whose entry names them."""
        self.upstream = upstream
        self.limits = limits or Limits()
        self.allowed = frozenset(series_names(SERVING_METRICS))

    def box_of(self, header: str | None) -> str:
        """The box whose account ``header`` (``Authorization: Basic ...``) names with its right
        password; RequestRefused(401) otherwise. The password is compared in constant time (an
        unknown user against a digest no password has, so it costs the same)."""
        if not header or not header.startswith("Basic "):
            raise RequestRefused(401, "send the box's account with basic auth (appliance-edge-NAME)")
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as err:
            raise RequestRefused(401, "the Authorization header is not valid basic auth") from err
        known = self.accounts.get(user, _NO_PASSWORD)
        if not hmac.compare_digest(password_digest(password), known) or not user.startswith(EDGE_PREFIX):
            raise RequestRefused(401, f"account {user[:80]!r} is unknown or its password is wrong")
        return user.removeprefix(EDGE_PREFIX)


class Handler(BoundedHandler):
    server: GateServer
    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, message: str = "") -> None:
        challenge = (("WWW-Authenticate", 'Basic realm="appliance write gate"'),) if status == 401 else ()
        body = (message + "\n").encode() if message else b""
        self.respond(status, body, headers=challenge, close=status >= 400)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, "ok")
        else:
            self._answer(404, f"only POST {WRITE_PATH} is served here")

    def do_POST(self) -> None:
        try:
            self._write()
        except RequestRefused as refused:
            self._answer(refused.status, str(refused))

    def _write(self) -> None:
        box = self.server.box_of(self.headers.get("Authorization"))
        if self.path != WRITE_PATH:
            raise RequestRefused(404, f"only POST {WRITE_PATH} is served here")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestRefused(411, "send the body with a Content-Length")
        if int(length) > MAX_BODY:
            raise RequestRefused(413, f"a body of {length} bytes is over the limit of {MAX_BODY}")
        encoding = self.headers.get("Content-Encoding", "")
        if encoding.lower() != "snappy":
            raise RequestRefused(415, f"Content-Encoding {encoding!r}: remote write bodies are snappy")
        body = self.rfile.read(int(length))
        if not body:
            raise RequestRefused(400, "empty body: send a snappy WriteRequest")
        try:
            forward, outcome = rewrite(
                body, box, self.server.allowed, self.server.limits, self.server.models.get(box)
            )
        except WireError as err:
            raise RequestRefused(400, f"not a remote-write request: {err}") from err
        if outcome.foreign:
            log.warning(
                "box %s: left out %d series of models it does not serve (%s); its edge_boxes entry "
                "names the models it may write for",
                box,
                sum(outcome.foreign.values()),
                ", ".join(repr(m) for m in sorted(outcome.foreign)[:5]),
            )
        if outcome.dropped:
            log.info(
                "box %s: left out %d series outside the serving metrics (%s)",
                box,
                sum(outcome.dropped.values()),
                ", ".join(sorted(outcome.dropped)[:5]),
            )
        if outcome.kept:
            self.server.upstream.send(forward)
        self._answer(204)


def load_accounts(path: Path) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """The accounts file's password digests by account, and the models of each box whose entry
    names them, by box name."""
    data = json.loads(path.read_text())
    accounts = {str(user): str(digest) for user, digest in data["accounts"].items()}
    models = {
        str(user).removeprefix(EDGE_PREFIX): frozenset(map(str, names))
        for user, names in data.get("models", {}).items()
    }
    return accounts, models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m appliance.monitoring.write_gate", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accounts-file", type=Path, required=True, help="edge accounts (accounts_file)")
    parser.add_argument("--upstream", required=True, help="the central Prometheus's /api/v1/write")
    parser.add_argument("--upstream-user", required=True)
    parser.add_argument("--upstream-password-file", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    upstream = Upstream(args.upstream, args.upstream_user, args.upstream_password_file)
    accounts, models = load_accounts(args.accounts_file)
    server = GateServer((args.host, args.port), accounts, upstream, models=models)
    log.info(
        "write gate on %s:%d for %d edge box(es), %d with their models named",
        args.host,
        args.port,
        len(server.accounts),
        len(models),
    )
    server.serve_forever()


if __name__ == "__main__":
    main()

"""The controller's HTTP API on the standard library's threading server.

A handful of JSON routes do not justify a web framework in the controller image; each request
gets its own thread and every route returns at once (runs go to background threads). The POST
routes and the run records (``GET /runs``: parameters, error text, work folders, process ids) need
``Authorization: Bearer <token>`` (the token file Alertmanager also reads), checked before the
body is read; tokens are compared in constant time. ``/healthz`` and ``/metrics`` (counts and
model names, which Prometheus scrapes) stay open. Connections are bounded in number,
idle time and the time to send a request (``appliance.bounded_http``). Errors are JSON
``{"error": ..., "fix": ...}`` with a 4xx status.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlparse

from appliance.bounded_http import BoundedHandler, BoundedHTTPServer
from appliance.errors import ApplianceError
from appliance.names import check_name
from appliance.pipelines.locks import holder
from appliance.workloads.controller import metrics
from appliance.workloads.controller.alerts import AlertPayloadError, drift_targets, parse_notification
from appliance.workloads.controller.schedule import Scheduler
from appliance.workloads.controller.service import STARTED, Controller

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
PIPELINE_RUN = r"/pipelines/([^/]+)/run"
"""Any segment matches, so a bad name gets the name rule's 400 instead of a bare 404."""
RUN = r"/runs/([A-Za-z0-9-]+)"


class HttpError(Exception):
    def __init__(self, status: int, error: str, fix: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.fix = status, error, fix


class ControllerServer(BoundedHTTPServer):
    """The HTTP server, holding the controller, the token and the metrics registry (connections
    and their idle time bounded: ``appliance.bounded_http``)."""

    def __init__(self, address: tuple[str, int], controller: Controller, token: str | None) -> None:
        super().__init__(address, Handler)
        self.controller = controller
        self.token = token
        self.registry = metrics.registry_for(
            controller.store, controller.pipeline_names, lambda: dict(controller.refusals)
        )
        self.schedulers: dict[str, Scheduler] = {}
        """Cron schedules by model (``models[].retrain_schedule``; ``--schedule``: the pipeline's model)."""


class Handler(BoundedHandler):
    server: ControllerServer

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        challenge = (("WWW-Authenticate", 'Bearer realm="appliance-controller"'),) if status == 401 else ()
        self.respond(status, body, content_type, challenge)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, default=str).encode() + b"\n")

    def _dispatch(self, routes: dict[str, Any]) -> None:
        path = urlparse(self.path).path.rstrip("/") or "/"
        try:
            for pattern, handler in routes.items():
                match = re.fullmatch(pattern, path)
                if match:
                    handler(*match.groups())
                    return
            raise HttpError(404, f"no route {self.command} {path}", "see docs/pipelines.md for the API")
        except HttpError as err:
            self._json(err.status, {"error": err.error, "fix": err.fix})
        except ApplianceError as err:
            self._json(400, {"error": err.message, "fix": err.fix or ""})

    def do_GET(self) -> None:
        self._dispatch(
            {
                "/healthz": self._healthz,
                "/metrics": self._metrics,
                "/runs": self._authorized(self._runs),
                RUN: self._authorized(self._run),
            }
        )

    def do_POST(self) -> None:
        # Every POST route needs the token: checked before the body is read, and a refusal closes
        # the connection (its unread body would otherwise be taken for the next request).
        try:
            self._authorize()
            self._payload = self._body()
        except HttpError as err:
            self.close_connection = True
            self._json(err.status, {"error": err.error, "fix": err.fix})
            return
        self._dispatch({"/alerts": self._alerts, PIPELINE_RUN: self._pipeline_run})

    # --- helpers -------------------------------------------------------------------------------

    def _authorized(self, route: Any) -> Any:
        """``route``, run only for a caller with the token."""

        def checked(*groups: str) -> None:
            self._authorize()
            route(*groups)

        return checked

    def _authorize(self) -> None:
        if not self.server.token:
            raise HttpError(
                503,
                "this route is disabled: the controller has no token",
                "start it with --webhook-token-file FILE",
            )
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.server.token.encode()
        ):
            raise HttpError(
                401,
                "missing or wrong bearer token",
                "send Authorization: Bearer <the controller_webhook_token secret>",
            )

    def _body(self) -> bytes:
        """The body, by its Content-Length: digits only, since ``int`` also takes ``-1`` (and
        ``rfile.read(-1)`` reads until the client closes), signs, spaces and underscores."""
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not (declared.isascii() and declared.isdigit()):
            raise HttpError(
                400,
                f"Content-Length {declared[:40]!r} is not a whole number of bytes",
                "send the body's size in bytes, or no body and no Content-Length",
            )
        length = int(declared)
        if length > MAX_BODY:
            raise HttpError(413, f"body of {length} bytes is over the {MAX_BODY} byte limit")
        return self.rfile.read(length) if length else b""

    def _with_status(self, run: dict[str, Any]) -> dict[str, Any]:
        if run["state"] == "running":
            owner = holder(self.server.controller.state_dir, run["model"])
            run["held_by_pid"] = owner.pid if owner and owner.run_id == run["id"] else None
        return run

    # --- routes --------------------------------------------------------------------------------

    def _healthz(self) -> None:
        health: dict[str, Any] = {"status": "ok", "active_runs": self.server.controller.active_runs()}
        schedules = self.server.schedulers
        if schedules:
            first = next(iter(schedules.values()))
            health |= {"schedule": first.expression, "next_fire": first.next_at}
            health["schedules"] = {
                model: {"schedule": s.expression, "next_fire": s.next_at} for model, s in schedules.items()
            }
        self._json(200, health)

    def _metrics(self) -> None:
        self._send(200, metrics.render(self.server.registry), metrics.CONTENT_TYPE)

    def _runs(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        try:
            limit = max(1, min(1000, int(query.get("limit", ["20"])[0])))
        except ValueError as err:
            raise HttpError(400, "limit must be a whole number", "e.g. /runs?limit=50") from err
        model = query.get("model", [None])[0]
        if model is not None:
            check_name(model, "model name")
        runs = self.server.controller.store.recent(limit=limit, model=model)
        self._json(200, {"runs": [self._with_status(r) for r in runs]})

    def _run(self, run_id: str) -> None:
        run = self.server.controller.store.get(run_id)
        if run is None:
            raise HttpError(404, f"no single run matches {run_id!r}", "list runs with GET /runs")
        self._json(200, self._with_status(run))

    def _alerts(self) -> None:
        body = self._payload
        try:
            models, refused = drift_targets(parse_notification(body))
        except AlertPayloadError as err:
            raise HttpError(400, err.message, err.fix or "") from err
        for reason in refused:
            log.warning("drift alert not acted on: %s", reason)
        if not models:
            detail = "; ".join(refused) or "no firing FeatureDrift/PredictionDrift alert"
            self._json(200, {"status": "ignored", "detail": detail, "refused": refused})
            return
        results = [self.server.controller.trigger_retrain(model).as_dict() for model in models]
        started = any(r["status"] == STARTED for r in results)
        self._json(202 if started else 200, {"results": results, "refused": refused})

    def _pipeline_run(self, name: str) -> None:
        body = self._payload
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as err:
            raise HttpError(
                400, f"body is not JSON ({err})", 'send {"model": ..., "params": {...}} or nothing'
            ) from err
        if not isinstance(data, dict) or set(data) - {"model", "params"}:
            raise HttpError(
                400,
                "body must be an object with only 'model' and 'params'",
                'e.g. {"model": "wine", "params": {"dataset": "wine"}}',
            )
        params = data.get("params") or {}
        model = data.get("model")
        if not isinstance(params, dict) or not all(isinstance(v, str | int | float) for v in params.values()):
            raise HttpError(400, "params must map names to strings or numbers")
        if model is not None and not isinstance(model, str):
            raise HttpError(400, "model must be a string")
        check_name(name, "pipeline name")
        if model is not None:
            check_name(model, "model name")
        if "dataset" in params:
            check_name(str(params["dataset"]), "dataset name")
        if name not in self.server.controller.pipeline_names():
            raise HttpError(
                404,
                f"no pipeline named {name!r}",
                f"known: {', '.join(self.server.controller.pipeline_names()) or '(none)'}",
            )
        result = self.server.controller.trigger(
            name, model, "manual", {k: str(v) for k, v in params.items()}, explicit=True
        )
        self._json(202 if result.status == STARTED else 409, result.as_dict())

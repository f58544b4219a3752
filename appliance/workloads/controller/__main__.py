"""``python -m appliance.workloads.controller``: the controller service's command line.

Start-up order matters: pipelines are checked and orphaned runs failed *before* the port opens,
so the first webhook already sees a consistent state. SIGTERM stops the scheduler, cancels the
running steps (their process groups are killed, their runs recorded failed) and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.workloads.controller.schedule import Scheduler
    from appliance.workloads.controller.service import Controller


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m appliance.workloads.controller", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    parser.add_argument("--state-dir", type=Path, required=True, help="the appliance state directory")
    parser.add_argument(
        "--pipelines-dir",
        type=Path,
        action="append",
        help="folder of pipeline files, searched before the built-ins (repeatable, first wins)",
    )
    parser.add_argument(
        "--models-file",
        type=Path,
        help="models.json: each model's dataset binding, pipeline, parameters and schedule",
    )
    parser.add_argument(
        "--schedule",
        help="cron expression that starts the retrain pipeline for its own model, e.g. '0 3 * * *'",
    )
    parser.add_argument(
        "--webhook-token-file", type=Path, help="file holding the bearer token for POST routes"
    )
    parser.add_argument(
        "--cooldown-seconds",
        type=float,
        default=1800.0,
        help="minimum time between alert-started retrains of one model (default 1800)",
    )
    parser.add_argument(
        "--retrain-pipeline", default="retrain", help="pipeline started by alerts and the schedule"
    )
    parser.add_argument(
        "--backup-file", type=Path, help="backup.json: scheduled backups (the answers' backup section)"
    )
    parser.add_argument(
        "--autoscale", help="autoscaling settings of the serving replicas (JSON; absent: no autoscaler)"
    )
    parser.add_argument("--serving-url", help="the serving supervisor's metrics port, e.g. http://HOST:8082")
    parser.add_argument("--serving-admin-token-file", type=Path, help="the serving admin token (autoscaler)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ApplianceError(
            f"cannot read --webhook-token-file {path}: {err.strerror}",
            fix="point it at the controller_webhook_token secret in STATE/secrets/",
        ) from err
    if not token:
        raise ApplianceError(
            f"--webhook-token-file {path} is empty", fix="write the token into it (one line)"
        )
    return token


def schedules(controller: Controller, default: str | None, log: logging.Logger) -> dict[str, Scheduler]:
    """A cron scheduler per model with a ``retrain_schedule`` (each runs the model's own pipeline
    on its own data), plus ``--schedule`` for the retrain pipeline's own model. An unbound model's
    schedule is refused here, at start-up, naming the key to add."""
    from appliance.workloads.binding import UnboundModelError
    from appliance.workloads.controller.schedule import Scheduler

    def fire(model: str | None) -> None:
        if model is None:
            result = controller.trigger(controller.retrain_pipeline, None, "cron")
        else:
            result = controller.trigger_retrain(model, "cron")
        log.info("scheduled trigger: %s", result.as_dict())

    found: dict[str, Scheduler] = {}
    for name, entry in controller.models.items():
        if not entry.retrain_schedule:
            continue
        if entry.dataset is None:
            log.error("schedule of model %s not started: %s", name, UnboundModelError(name, []))
            continue
        found[name] = Scheduler(entry.retrain_schedule, lambda m=name: fire(m))  # type: ignore[misc]
    if default:
        found["*"] = Scheduler(default, lambda: fire(None))
    return found


def serve(args: argparse.Namespace) -> None:
    from appliance.workloads.binding import load_models
    from appliance.workloads.controller.backups import start_backups
    from appliance.workloads.controller.cooldown import Cooldown
    from appliance.workloads.controller.http import ControllerServer
    from appliance.workloads.controller.service import Controller

    log = logging.getLogger("appliance.controller")
    if args.cooldown_seconds < 0:
        raise ApplianceError("--cooldown-seconds must be 0 or more", fix="e.g. --cooldown-seconds 1800")
    token = read_token(args.webhook_token_file)
    try:  # read before anything starts, so that a bad path stops nothing half-started
        serving_admin = (
            args.serving_admin_token_file.read_text().strip()
            if args.autoscale and args.serving_admin_token_file
            else ""
        )
    except OSError as err:
        raise ApplianceError(
            f"cannot read --serving-admin-token-file {args.serving_admin_token_file}: {err.strerror}",
            fix="point it at the serving_admin_token secret in STATE/secrets/",
        ) from err
    state_dir = args.state_dir.resolve()
    env = {**os.environ, "APPLIANCE_STATE_DIR": str(state_dir)}
    models = load_models(args.models_file)
    controller = Controller(
        state_dir,
        args.pipelines_dir,
        env,
        Cooldown(args.cooldown_seconds),
        retrain_pipeline=args.retrain_pipeline,
        models=models,
    )
    schedulers = schedules(controller, args.schedule, log)
    controller.start_up()
    try:
        server = ControllerServer((args.host, args.port), controller, token)
    except OSError as err:
        raise ApplianceError(
            f"cannot listen on {args.host}:{args.port}: {err.strerror}",
            fix="choose a free port with --port (ports.controller in the answers file)",
        ) from err
    for scheduler in schedulers.values():
        scheduler.start()
    server.schedulers = schedulers
    backups = start_backups(args.backup_file, state_dir, server.registry)
    scaler = None
    if args.autoscale and args.serving_url:
        from appliance.workloads.controller.autoscale import start_for_controller

        scaler = start_for_controller(args.autoscale, args.serving_url, serving_admin, server.registry)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "controller listening on http://%s:%d (pipelines: %s)",
        args.host,
        server.server_address[1],
        ", ".join(controller.pipeline_names()) or "none",
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        for scheduler in schedulers.values():
            scheduler.stop()
        if backups is not None:
            backups.stop()
        if scaler is not None:
            scaler.stop()
        controller.stop()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(args)
    except ApplianceError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

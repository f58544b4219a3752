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

from appliance.errors import ApplianceError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m appliance.workloads.controller", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    parser.add_argument("--state-dir", type=Path, required=True, help="the appliance state directory")
    parser.add_argument(
        "--pipelines-dir", type=Path, help="folder of pipeline files, searched before the built-ins"
    )
    parser.add_argument(
        "--schedule", help="cron expression that starts the retrain pipeline, e.g. '0 3 * * *'"
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


def serve(args: argparse.Namespace) -> None:
    from appliance.workloads.controller.cooldown import Cooldown
    from appliance.workloads.controller.http import ControllerServer
    from appliance.workloads.controller.schedule import Scheduler
    from appliance.workloads.controller.service import Controller

    log = logging.getLogger("appliance.controller")
    if args.cooldown_seconds < 0:
        raise ApplianceError("--cooldown-seconds must be 0 or more", fix="e.g. --cooldown-seconds 1800")
    token = read_token(args.webhook_token_file)
    state_dir = args.state_dir.resolve()
    env = {**os.environ, "APPLIANCE_STATE_DIR": str(state_dir)}
    controller = Controller(
        state_dir,
        args.pipelines_dir,
        env,
        Cooldown(args.cooldown_seconds),
        retrain_pipeline=args.retrain_pipeline,
    )
    scheduler = None
    if args.schedule:
        scheduler = Scheduler(
            args.schedule,
            lambda: log.info(
                "scheduled trigger: %s", controller.trigger(args.retrain_pipeline, None, "cron").as_dict()
            ),
        )
    controller.start_up()
    try:
        server = ControllerServer((args.host, args.port), controller, token)
    except OSError as err:
        raise ApplianceError(
            f"cannot listen on {args.host}:{args.port}: {err.strerror}",
            fix="choose a free port with --port (ports.controller in the answers file)",
        ) from err
    if scheduler:
        scheduler.start()
        server.scheduler = scheduler

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
        if scheduler:
            scheduler.stop()
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

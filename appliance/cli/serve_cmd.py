"""``appliance serve``: run the ONNX model server standalone.

The server (onnxruntime, grpc, numpy) is imported inside the command, so the CLI core stays light.
``python -m appliance.workloads.serving`` runs this same command with the same flags.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.errors import ApplianceError
from appliance.workloads.serving.config import PROVIDER_NAMES


@click.command("serve")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help="Model to serve: a local model.onnx or folder, s3://BUCKET/KEY, models:/NAME@ALIAS "
    "or models:/NAME/VERSION. Repeat for several; NAME=URI names one inline.",
)
@click.option(
    "--name", "names", multiple=True, help="Name of the model (one per --model; default from the URI)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--http-port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="REST port (0: any free).",
)
@click.option(
    "--grpc-port",
    default=8081,
    show_default=True,
    type=click.IntRange(-1, 65535),
    help="gRPC port (-1: off).",
)
@click.option(
    "--metrics-port",
    default=8082,
    show_default=True,
    type=click.IntRange(-1, 65535),
    help="Prometheus /metrics port (-1: off).",
)
@click.option(
    "--token",
    envvar="APPLIANCE_SERVING_TOKEN",
    help="Bearer token required on every non-health call. "
    "Env: APPLIANCE_SERVING_TOKEN. Auth is off unless a token is given.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="APPLIANCE_SERVING_TOKEN_FILE",
    help="File holding the bearer token(s), one per line.",
)
@click.option(
    "--admin-token",
    envvar="APPLIANCE_SERVING_ADMIN_TOKEN",
    help="Bearer token of the model repository API (load/unload), distinct from the inference "
    "token. Env: APPLIANCE_SERVING_ADMIN_TOKEN. Without one, that API is closed while an inference "
    "token is set.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="APPLIANCE_SERVING_ADMIN_TOKEN_FILE",
    help="File holding the admin token(s), one per line.",
)
@click.option(
    "--no-auth",
    is_flag=True,
    default=False,
    help="Serve on an address other than loopback without a token (every route, the repository "
    "API too, open to whoever reaches it). Without it such a server refuses to start.",
)
@click.option(
    "--max-batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Most rows one ONNX Runtime call batches across requests.",
)
@click.option(
    "--max-queue-delay-us",
    default=0,
    show_default=True,
    type=click.IntRange(0, 10_000_000),
    help="How long a request may wait for others to batch with (0: only those already arrived).",
)
@click.option(
    "--poll-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="How often to check each model's source (registry alias, file, S3 object) "
    "for a new version; 0: never.",
)
@click.option(
    "--wait-for-model/--no-wait-for-model",
    default=False,
    show_default=True,
    help="Start even when a model cannot be loaded yet (e.g. no champion registered): retry it every "
    "--poll-seconds and report not ready until then. Without it the server exits with the reason.",
)
@click.option(
    "--drift-window", default=1000, show_default=True, type=click.IntRange(1), help="Rows in the PSI window."
)
@click.option(
    "--intra-op-threads",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="ONNX Runtime intra-op threads (0: all cores).",
)
@click.option(
    "--inter-op-threads",
    default=1,
    show_default=True,
    type=click.IntRange(0),
    help="ONNX Runtime inter-op threads.",
)
@click.option(
    "--execution-provider",
    type=click.Choice(PROVIDER_NAMES),
    default="auto",
    show_default=True,
    help="Where models run: auto (the GPU when onnxruntime-gpu and a GPU are there, else the CPU), "
    "cpu, or cuda (refuse to start without a working CUDA provider).",
)
@click.option(
    "--limit",
    "limit_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A server limit (repeatable), e.g. --limit max_body_bytes=1048576; see docs/security.md.",
)
@click.option(
    "--limits-json",
    default=None,
    help="Server limits as a JSON object (what the stack renders from serving.limits); "
    "--limit flags apply on top.",
)
@click.option(
    "--allow-client-shm",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=False,
    help="Take Triton's system shared-memory extension: clients on this host pass tensors through "
    "POSIX shared memory (objects of the server's own user) instead of the request; off by default "
    "(alone or =true: on).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep the last good version of every models:/ model here and serve it while the registry "
    "cannot be reached, also after a restart (edge boxes); without it nothing is cached.",
)
@click.option(
    "--registry-url",
    default=None,
    help="MLflow registry the models:/ URIs name (MLflow itself or the TLS gateway in front of it), "
    "instead of MLFLOW_TRACKING_URI; its account: MLFLOW_TRACKING_USERNAME/_PASSWORD or the two "
    "options below.",
)
@click.option("--registry-user", default=None, help="MLflow account of --registry-url (a read-only one).")
@click.option(
    "--registry-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="File holding the password of that account (mode 0600).",
)
@click.option(
    "--registry-ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA certificate an https --registry-url is checked against (the central stack's "
    "tls_ca_cert); the system's CAs when absent.",
)
def serve_cmd(
    models: tuple[str, ...],
    names: tuple[str, ...],
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    token: str | None,
    token_file: Path | None,
    admin_token: str | None,
    admin_token_file: Path | None,
    no_auth: bool,
    max_batch_size: int,
    max_queue_delay_us: int,
    poll_seconds: float,
    wait_for_model: bool,
    drift_window: int,
    intra_op_threads: int,
    inter_op_threads: int,
    execution_provider: str,
    limit_pairs: tuple[str, ...],
    limits_json: str | None,
    allow_client_shm: bool,
    cache_dir: Path | None,
    registry_url: str | None,
    registry_user: str | None,
    registry_password_file: Path | None,
    registry_ca_file: Path | None,
) -> None:
    """Serve ONNX models over the KServe v2 protocol (REST and gRPC) with /metrics."""
    from pydantic import ValidationError

    from appliance.workloads.serving.config import (
        ADMIN_TOKEN_ENV,
        ServeConfig,
        parse_model_args,
        read_tokens,
    )
    from appliance.workloads.serving.limits import ServerLimits

    try:
        pairs = parse_model_args(models, names)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--model/--name") from None
    try:
        base = ServerLimits.model_validate_json(limits_json) if limits_json else None
        limits = ServerLimits.from_pairs(limit_pairs, base)
    except (ValueError, ValidationError) as err:
        raise click.BadParameter(str(err), param_hint="--limit/--limits-json") from None
    tokens = read_tokens(token, token_file)
    admin_tokens = read_tokens(admin_token, admin_token_file, ADMIN_TOKEN_ENV)
    refusal = open_to_the_network(host, bool(tokens), no_auth)
    if refusal:
        raise click.BadParameter(refusal, param_hint="--host/--token-file")
    if tokens & admin_tokens:
        raise click.BadParameter(
            "the admin token must differ from the inference token (generate another one)",
            param_hint="--admin-token/--admin-token-file",
        )
    if registry_url:
        _use_registry(registry_url, registry_user, registry_password_file, registry_ca_file)
    if cache_dir is not None:
        _fail_fast_to_cache()
    config = ServeConfig(
        models=pairs,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        tokens=tokens,
        admin_tokens=admin_tokens,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        poll_seconds=poll_seconds,
        wait_for_models=wait_for_model,
        drift_window=drift_window,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        execution_provider=execution_provider,
        limits=limits,
        allow_client_shm=allow_client_shm,
        cache_dir=cache_dir,
    )
    from appliance.workloads.serving.errors import InferenceError
    from appliance.workloads.serving.server import run

    try:
        run(config)
    except InferenceError as err:  # a model failed to load at startup
        raise ApplianceError(
            err.message, fix="check the --model path/URI, the data connection env and --execution-provider"
        ) from err
    except (OSError, ValueError) as err:
        raise ApplianceError(
            f"model server failed to start: {err}",
            fix="check the --model path/URI, the ports and the data connection env",
        ) from err


def open_to_the_network(host: str, has_token: bool, no_auth: bool) -> str | None:
    """Why a model server on ``host`` must not start: bound beyond loopback with no inference token,
    every route (inference, metadata, the repository API's load and unload) would be open to the
    network; ``--no-auth`` says that is meant. None: it may start. The supervisor asks the same
    of its balancer's address."""
    import ipaddress

    if has_token or no_auth or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to any address
    return (
        f"{host} is reachable from other machines and no token is set, so every route (the "
        "repository API's load and unload too) would be open to them: give --token-file FILE "
        "(and --admin-token-file for load/unload), bind 127.0.0.1, or pass --no-auth to serve "
        "openly on purpose"
    )


def _use_registry(url: str, user: str | None, password_file: Path | None, ca_file: Path | None) -> None:
    """Point this process's MLflow client at ``url`` (an edge box following a central registry),
    as ``user`` with the password in ``password_file`` when given."""
    import os

    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} must start with http:// or https://", param_hint="--registry-url")
    env = {"MLFLOW_TRACKING_URI": url}
    if user:
        env["MLFLOW_TRACKING_USERNAME"] = user
    if password_file is not None:
        if not password_file.is_file() or not password_file.read_text().strip():
            raise click.BadParameter(
                f"{password_file} is missing or empty: write the account's password there (mode 0600)",
                param_hint="--registry-password-file",
            )
        env["MLFLOW_TRACKING_PASSWORD"] = password_file.read_text().strip()
    if ca_file is not None:
        if not ca_file.is_file():
            raise click.BadParameter(
                f"{ca_file} does not exist: copy the registry's CA certificate there",
                param_hint="--registry-ca-file",
            )
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(ca_file)
    os.environ.update(env)


def _fail_fast_to_cache() -> None:
    """MLflow's client retries an unreachable server for about four minutes by default; with a
    cached version to serve instead, a registry check gives up after a few seconds (a caller's
    own MLFLOW_HTTP_REQUEST_* settings win)."""
    import os

    for name, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
    ):
        os.environ.setdefault(name, value)

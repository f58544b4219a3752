"""The TLS gateway's nginx configuration, generated from the answers and the services in the stack.

One nginx terminates TLS for what people and clients use, each on its own port so that no
service needs a path prefix: the model server (REST over HTTPS and gRPC over TLS on the same
HTTP/2 port, gRPC routed by its service path), MLflow, and the workbench (WebSockets too). The
services behind it stay on the bind address (or the stack network), so with
``tls.listen_address: 0.0.0.0`` only the gateway faces outward.

The certificate is made here when missing (``appliance.tls``), and its fingerprint is written
into the file, so a re-issued certificate changes the config hash and restarts the gateway.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from appliance.stack import config_dir
from appliance.workloads.serving.limits import proxy_body_limit
from appliance.workloads.serving.peer import FORWARDED_HEADER

FRONTED = (
    ("serving", "gateway_serving", "/v2"),
    ("mlflow", "gateway_mlflow", ""),
    ("workbench", "gateway_workbench", "/lab"),
)
"""What the gateway fronts: service, its gateway port (``ports.*``), the path ``status`` shows.
The first port is always open (the health check's), whatever the stack runs."""
HEALTH_PATH = "/-/gateway/health"
"""Answered by nginx itself on every gateway port: the health probe's target."""
GRPC_SERVICE_PATH = "/inference.GRPCInferenceService/"
"""Requests under this path are gRPC calls (Open Inference Protocol) and go to the gRPC port."""
NGINX_TEMP_PATHS = """\
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;"""
"""nginx's temporary folders, relative to its ``-p`` prefix (a state folder this user owns): the
built-in defaults under /var/lib/nginx are root's. Shared by every nginx the appliance runs (this
gateway and the serving replicas' balancer)."""


def nginx_user(master_is_root: bool) -> str:
    """The ``user`` line of an nginx the appliance runs: its workers run as the account that runs
    the master, as every other service of the stack does. Started by root with no such line, they
    run as ``nobody``, which cannot reach the temporary folders inside the state folder (0700): a
    request body larger than nginx's buffer then failed with a 500 (``client_body_temp ...
    Permission denied``). Another account needs no line (nginx would ignore it, with a warning)."""
    return "user root;\n" if master_is_root else ""


MEMBERS = {"serving_rest": "serving_http", "serving_grpc": "serving_grpc"}
"""In a cluster, the model-server upstreams (and the port of theirs, ``ports.*``) whose servers
are the serving hosts, read from a members file beside ``nginx.conf``, a file of the gateway unit
that it reads again on a reload (``members_files``): a host joins or leaves with a graceful
reload, never a restart."""
FAIL_TIMEOUT_S = 5
"""A serving host that refused or timed out a connection is left alone this long (passive health:
open-source nginx has no active checks), then tried again with one request."""
CONNECT_TIMEOUT_S = 1
"""Connecting to a serving host over the cluster network: a host that is gone (no answer at all)
costs a request this much before nginx sends it to another host."""
UPSTREAM_KEEPALIVE_TIME_S = 1
"""An upstream connection is closed after a request once this old: a drained host (listening no
more, serving what it has) loses its last connection from the gateway within a second or two."""
UPSTREAM_IDLE_S = 2
"""An idle upstream connection is closed after this long, below ``FAIL_TIMEOUT_S``: no kept
connection to a host that vanished is left to be tried when its fail window ends."""


def in_cluster(ctx: Any) -> bool:
    """Whether ``ctx`` renders one host of a cluster (``appliance cluster``)."""
    return ctx.hosts is not None and ctx.answers.cluster is not None


def members_file(ctx: Any, upstream: str) -> Path:
    """The file on the gateway host listing ``upstream``'s servers (cluster only)."""
    return config_dir(ctx.state_dir, "gateway") / f"{upstream}.members"


def member_lines(address: str, port: int) -> dict[str, str]:
    """One serving host's ``server`` lines in a members file: ``primary`` (passive failover: one
    failed connection leaves it alone for ``FAIL_TIMEOUT_S``) and ``backup`` (never marked: should
    every primary be left alone at once, each is tried in turn rather than failing the request)."""
    target = f"{address}:{port}"
    return {
        "primary": f"server {target} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;",
        "backup": f"server {target} backup max_fails=0;",
    }


EMPTY_MEMBERS = "server 127.0.0.1:1 down;"
"""A members file with no serving host (nginx refuses an upstream without servers): every request
gets the gateway's 503 naming the model server as unreachable."""


def members_text(members: list[dict[str, Any]], upstream: str, out: Collection[str] = ()) -> str:
    """``upstream``'s members file: the server lines of each serving host in ``members``
    (``serving_members``) but those in ``out`` (hosts being taken out), every primary first, then
    every backup; with none left, one server marked down (nginx refuses an empty upstream)."""
    kept = [m for m in members if m["host"] not in out]
    lines = [m[upstream]["primary"] for m in kept] + [m[upstream]["backup"] for m in kept]
    head = (
        f"# The serving hosts behind the gateway's {upstream} upstream (included by nginx.conf).\n"
        "# A change reloads nginx gracefully; a host that stops listening is skipped until it\n"
        "# listens again. Written by `appliance cluster up`; edits are overwritten.\n"
    )
    return head + "\n".join(lines or [EMPTY_MEMBERS]) + "\n"


def members_files(members: list[dict[str, Any]], out: Collection[str] = ()) -> list[dict[str, Any]]:
    """The gateway unit's members files (``members_text`` of each upstream in ``MEMBERS``), as
    ``appliance cluster`` renders a unit's files: files nginx reads again on a reload (SIGHUP), so
    the units machinery reloads the gateway when one changes, or when its record says the running
    nginx read another (``appliance.cluster.unit_records``)."""
    return [
        {"key": f"{upstream}.members", "value": members_text(members, upstream, out), "reload": True}
        for upstream in MEMBERS
    ]


def serving_members(ctx: Any) -> list[dict[str, Any]]:
    """The serving hosts (the ``serving`` group; edge boxes are not behind the gateway) as the
    gateway host ``ctx.here`` dials them, with their lines for each members file:
    ``[{host, serving_rest: {primary, backup}, serving_grpc: {...}}]``."""
    from appliance.cluster.inventory import Inventory

    inventory = Inventory(ctx.answers.cluster)
    ports = ctx.answers.ports
    found = []
    for host in inventory.group("serving"):
        address = ctx.addressing.host_address(host)
        entry: dict[str, Any] = {"host": host}
        for upstream, port in MEMBERS.items():
            entry[upstream] = member_lines(address, getattr(ports, port))
        found.append(entry)
    return found


def mlflow_targets(ctx: Any) -> list[str]:
    """In a cluster, every MLflow server (one per control host) as the gateway host ``ctx.here``
    dials it, the first control host's first: ``host:port`` each."""
    from appliance.cluster.inventory import Inventory

    hosts, port = Inventory(ctx.answers.cluster).hosts_of("mlflow"), ctx.answers.ports.mlflow
    return [f"{ctx.addressing.host_address(host)}:{port}" for host in hosts]


def _cluster_names(ctx: Any) -> list[str]:
    """The gateway hosts' addresses, which clients dial in a cluster: the same for every host's
    render (the certificate is made once, on the machine that runs ``cluster up``)."""
    from appliance.cluster.inventory import Inventory

    inventory = Inventory(ctx.answers.cluster)
    return [inventory.hosts[h].address for h in inventory.hosts_of("gateway")]


def gateway_address(ctx: Any) -> str:
    """Where the TLS gateway listens on the host: ``tls.listen_address`` or the bind address."""
    return str(ctx.answers.tls.listen_address or ctx.answers.bind_address)


def gateway_url(ctx: Any, chosen: Collection[str]) -> str:
    """What ``status`` shows for the gateway: the first service in the stack that it fronts (the
    model server's API, else MLflow, else the workbench)."""
    address, ports = gateway_address(ctx), ctx.answers.ports
    for service, port, path in FRONTED:
        if service in chosen:
            return ctx.addressing.gateway_url(address, getattr(ports, port), path)
    return ctx.addressing.gateway_url(address, ports.gateway_serving)


def gateway_nginx(ctx: Any, services: Any) -> str:
    """``nginx.conf`` for the ``gateway`` service (a ``config_files`` generator)."""
    from appliance.tls import certificate_names, ensure_certificates  # cryptography: only with TLS on

    answers = ctx.answers
    cluster = in_cluster(ctx)
    extra = [*answers.tls.hostnames, *(_cluster_names(ctx) if cluster else [])]
    tls = ensure_certificates(
        ctx.secrets, certificate_names(answers.bind_address, gateway_address(ctx), extra)
    )
    cert, key = tls.cert, tls.key
    if cluster:  # made here, read on the host from its own secrets folder
        cert, key = (Path(ctx.state_dir) / "secrets" / p.name for p in (tls.cert, tls.key))
    inside = ctx.in_containers
    ports = answers.ports

    def upstream(service: str, port: int) -> str:
        return f"{ctx.host_of(service, inside)}:{port}"

    def listen(port: int) -> str:
        if inside:
            return f"listen {port} ssl http2;"
        address = gateway_address(ctx)
        host = f"[{address}]" if ":" in address else address
        return f"listen {host}:{port} ssl http2;"

    rate = answers.tls.rate_limit_rps
    limit = f"limit_req zone=clients burst={2 * rate} nodelay;" if rate else ""
    max_body = answers.serving.limits.max_body_bytes
    blocks = [_serving_block(listen(ports.gateway_serving), limit, "serving" in services, cluster, max_body)]
    upstreams = []
    if "serving" in services and cluster:
        upstreams += [_members_upstream(name, members_file(ctx, name)) for name in MEMBERS]
    elif "serving" in services:
        upstreams += [
            _upstream("serving_rest", upstream("serving", ports.serving_http)),
            _upstream("serving_grpc", upstream("serving", ports.serving_grpc)),
        ]
    if "mlflow" in services and cluster:  # the MLflow server of every control host
        targets = mlflow_targets(ctx)
        upstreams.append(_servers_upstream("mlflow", targets))
        blocks.append(_mlflow_block(listen(ports.gateway_mlflow), limit, targets[0], failover=True))
    elif "mlflow" in services:
        target = upstream("mlflow", ports.mlflow)
        upstreams.append(_upstream("mlflow", target))
        blocks.append(_mlflow_block(listen(ports.gateway_mlflow), limit, target))
    if "workbench" in services:
        target = upstream("workbench", ports.workbench)
        upstreams.append(_upstream("workbench", target))
        blocks.append(_workbench_block(listen(ports.gateway_workbench), limit, target))
    rate_zone = f"limit_req_zone $binary_remote_addr zone=clients:1m rate={rate}r/s;" if rate else ""
    return _MAIN.format(
        body_class=BODY_CLASS,
        # only the local runtime's nginx shares the state folder's owner: a container's reaches
        # its temporary folders through its own volume, a cluster host's unit runs as the
        # appliance account
        user=nginx_user(not inside and not cluster and os.geteuid() == 0),
        temp_paths=NGINX_TEMP_PATHS,
        fingerprint=tls.fingerprint,
        cert=cert,
        key=key,
        rate_zone=rate_zone,
        upstreams="\n".join(upstreams),
        servers="\n".join(blocks),
    )


_MAIN = """\
# Generated by the appliance (TLS gateway); edits are overwritten on the next `appliance up`.
# server certificate sha256 {fingerprint}
{user}worker_processes auto;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}

http {{
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
{temp_paths}
    # MLflow's artifacts and the workbench's files have no size limit of their own: their blocks
    # take a large body only from a caller whose login the service has checked first. The model
    # server's block has its limit (below), so a caller with no token cannot have nginx hold more
    # than that on disk for a request the model server will refuse from its head.
    client_max_body_size 0;

    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:TLS:2m;
    ssl_session_timeout 1h;

    limit_req_status 429;
    {rate_zone}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
{body_class}

{upstreams}
{servers}
}}
"""


def _upstream(name: str, target: str) -> str:
    return f"    upstream {name} {{ server {target}; keepalive 32; }}"


def _servers_upstream(name: str, targets: list[str]) -> str:
    """Stateless servers sharing their stores (MLflow's, one per control host), with the
    serving hosts' passive failover: one refused or timed-out connection leaves a server alone for
    ``FAIL_TIMEOUT_S``; a backup line of each tries them all before a request fails."""
    lines = [member_lines(address, int(port)) for address, port in (t.rsplit(":", 1) for t in targets)]
    servers = [line["primary"] for line in lines] + [line["backup"] for line in lines]
    body = "\n".join(f"        {line}" for line in servers)
    return f"""\
    upstream {name} {{
{body}
        keepalive 32;
        keepalive_timeout {UPSTREAM_IDLE_S}s;
    }}"""


def _members_upstream(name: str, members: Path) -> str:
    """A cluster's model-server upstream: its servers from the members file, the least busy host
    first, upstream connections closed soon enough for a drained host to be left within seconds."""
    return f"""\
    upstream {name} {{
        least_conn;
        include {members};
        keepalive 32;
        keepalive_time {UPSTREAM_KEEPALIVE_TIME_S}s;
        keepalive_timeout {UPSTREAM_IDLE_S}s;
    }}"""


_FAILOVER = f"""
            # Another serving host takes the request when this one refuses the connection or
            # does not answer: inference is stateless, so repeating a POST there is safe
            # (non_idempotent), and the client never sees which host answered.
            proxy_next_upstream error timeout non_idempotent;
            proxy_connect_timeout {CONNECT_TIMEOUT_S}s;"""
_GRPC_FAILOVER = f"""
            grpc_next_upstream error timeout non_idempotent;
            grpc_connect_timeout {CONNECT_TIMEOUT_S}s;"""


def _health() -> str:
    return f'        location = {HEALTH_PATH} {{ default_type text/plain; return 200 "ok\\n"; }}'


def _serving_block(listen: str, limit: str, present: bool, cluster: bool, max_body: int) -> str:
    """The model server's API: bodies up to a little over its own limit (``max_body``), past which
    nginx answers the 413 the model server would give. The body is buffered before it is sent on
    (streamed, a refusal from the model server's head broke the client's HTTP/2 connection: h2spec
    4.2/1), and a cluster's gateway sends it again to another serving host when the first does not
    answer (``_FAILOVER``)."""
    too_large = (
        f'{{"error": "request body over {max_body} bytes, the model server limit '
        '(serving.limits.max_body_bytes)"}'
    )
    if not present:
        routes = (
            "        location / { default_type application/json;\n"
            '            return 503 \'{"error": "this stack runs no model server"}\'; }'
        )
    else:
        routes = f"""\
        location {GRPC_SERVICE_PATH} {{
            {limit}
            grpc_pass grpc://serving_grpc;
            grpc_set_header {FORWARDED_HEADER} https;
            grpc_read_timeout 300s;{_GRPC_FAILOVER if cluster else ""}
        }}
        location / {{
            {limit}
            proxy_pass http://serving_rest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header {FORWARDED_HEADER} https;
            proxy_buffering off;
            proxy_read_timeout 300s;{_FAILOVER if cluster else ""}
        }}
        error_page 502 504 = @unreachable;
        location @unreachable {{
            default_type application/json;
            return 503 '{{"error": "model server unreachable behind the gateway: see appliance status"}}';
        }}
        error_page 413 = @too_large;
        location @too_large {{
            default_type application/json;
            return 413 '{too_large}';
        }}"""
    size = f"\n        client_max_body_size {proxy_body_limit(max_body)};" if present else ""
    return f"""\
    server {{
        {listen}{size}
{_health()}
{routes}
    }}"""


SMALL_BODY_DIGITS = 5
"""A body announced with at most this many digits of Content-Length (under 100,000 bytes) is
small: held in nginx's memory and passed on without a login check (``_web_block``)."""
SMALL_BODY_BUFFER = "128k"
"""nginx's memory buffer for a small body: larger than any, so none reaches the disk."""
BODY_CLASS = f"""\
    # What a request to MLflow or the workbench carries: none (a GET or HEAD announcing no body),
    # a small body (its length announced, under 10^{SMALL_BODY_DIGITS} bytes), or a large or
    # unknown one, taken only once the service has checked the caller's login.
    map "$request_method:$http_content_length$http_transfer_encoding" $body_class {{
        "~^(GET|HEAD):$" none;
        "~^[A-Z]+:[0-9]{{1,{SMALL_BODY_DIGITS}}}$" small;
        default large;
    }}"""
"""The ``http``-level variable ``_web_block`` routes on."""
LOGIN_CHECK_PATH = "/-/gateway/login"
"""The internal location whose subrequest asks the service behind the gateway whether a request's
credentials are good, before nginx takes its body (``_web_block``)."""
LOGIN_CHECKS = {"mlflow": "/api/2.0/mlflow/users/current", "workbench": "/api/status"}
"""What each web service answers 200 to for any logged-in caller and 401/403 to anyone else,
without a body or a side effect: MLflow's own user (its basic auth; the appliance's login check
remembers a verified password, so a subrequest costs a row read, ``mlflow_login``), Jupyter's
status (its token or login cookie)."""


def _web_block(listen: str, limit: str, upstream: str, target: str, extra: str, read_timeout: str) -> str:
    """A server proxying everything to ``upstream`` with the Host it would see without the gateway
    (``target``: MLflow's and Jupyter's host checks refuse unknown names).

    Jupyter and MLflow took a whole request body into their memory before their login checks
    (until ``workbench_gate`` and ``mlflow_gate`` checked first on their own ports), and nginx
    writes a body past its buffer to disk before proxying. So requests go three ways by what they
    carry (``BODY_CLASS``): a read passes no body on (nginx drops one as it arrives); a small body
    (under 100,000 bytes, announced) is held in memory and passed on, as MLflow's JSON calls are,
    at no extra cost; a large or unknown one (an artifact, a notebook) is read only once the
    service has said the caller's credentials are good (``auth_request``, which runs before the
    body is read; one more request to the service, measured in
    ``benchmarks/gateway_login_check.py``). Bodies of logged-in callers have no size limit of the
    gateway's."""
    proxy = f"""\
            proxy_pass http://{upstream};
            proxy_set_header Host {target};
            proxy_http_version 1.1;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout {read_timeout};"""
    return f"""\
    server {{
        {listen}
{_health()}
        location / {{
            {limit}
            error_page 418 = @large;
            error_page 419 = @small;
            if ($body_class = large) {{ return 418; }}
            if ($body_class = small) {{ return 419; }}{extra}
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
{proxy}
        }}
        location @small {{
            {limit}
            client_body_buffer_size {SMALL_BODY_BUFFER};{extra}
{proxy}
        }}
        location @large {{
            {limit}
            auth_request {LOGIN_CHECK_PATH};
            auth_request_set $login_challenge $upstream_http_www_authenticate;
            add_header WWW-Authenticate $login_challenge always;{extra}
{proxy}
        }}
        location = {LOGIN_CHECK_PATH} {{
            internal;
            proxy_pass http://{upstream}{LOGIN_CHECKS[upstream]};
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Transfer-Encoding "";
            proxy_set_header Host {target};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout 30s;
        }}
    }}"""


_MLFLOW_FAILOVER = f"""
            # Another MLflow server takes a request whose connection was refused or timed out
            # (the request never reached the first, so repeating it there is safe); one that was
            # sent is not repeated (a POST may have been applied).
            proxy_next_upstream error timeout;
            proxy_connect_timeout {CONNECT_TIMEOUT_S}s;"""


def _mlflow_block(listen: str, limit: str, target: str, failover: bool = False) -> str:
    extra = '\n            proxy_set_header Connection "";' + (_MLFLOW_FAILOVER if failover else "")
    return _web_block(listen, limit, "mlflow", target, extra, "300s")


def _workbench_block(listen: str, limit: str, target: str) -> str:
    # Jupyter refuses WebSockets whose Origin differs from its Host: a page served through the
    # gateway has the gateway's origin, so exactly that origin is mapped to the workbench's own.
    websockets = f"""
            set $workbench_origin $http_origin;
            if ($http_origin = "https://$http_host") {{ set $workbench_origin "http://{target}"; }}
            proxy_set_header Origin $workbench_origin;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;"""
    return _web_block(listen, limit, "workbench", target, websockets, "1h")

"""MLflow's own authentication: its config file, the stack's accounts, and the job that makes them.

MLflow runs as ``mlflow server --app-name basic-auth``, its passwords checked by
``appliance.mlflow_login``: every request but ``/health`` and static files needs a user, and
nobody without one can create runs, move aliases (``champion``, which the
model server follows) or upload and delete artifacts. Three accounts, each password a generated
0600 secret:

- ``admin`` (``mlflow_admin_password``): MLflow creates it itself on first start from
  ``MLFLOW_AUTH_ADMIN_PASSWORD``; only the install job and the person who installed the stack use it.
- ``appliance-writer`` (``mlflow_writer_password``): the trainer, the controller (its pipeline
  runs), the workbench and the CLI's lifecycle commands. A role grants it EDIT on every experiment
  and registered model, so it can log runs and move aliases on what anyone registered, and
  nothing more (no user management, no deletes of what it did not create).
- ``appliance-reader`` (``mlflow_reader_password``): the model server. MLflow's default
  permission (READ) is all it has: it reads the registry and downloads artifacts; an alias move,
  a run or an artifact upload gets 403.

Each edge box gets an account of its own, ``appliance-edge-NAME`` (``edge_secret(NAME)``), with
what the reader has: a cluster's ``edge`` hosts, and the standalone boxes the answers' ``edge_boxes``
names. A lost or stolen box is cut off alone, by taking its name out (the inventory line or the
``edge_boxes`` entry: the next ``up`` deletes its account, and then its password, so the name
given back later gets a new one), without a new password for every other model server.

``python -m appliance.mlflow_auth`` is the stack's one-shot ``mlflow-users`` job: it creates the
two service accounts (and the edge hosts' when given), resets a password that no longer matches its
secret, makes and assigns the writer's role, each only when missing, and deletes an edge account no
longer given, so it can run again at any time. ``--check`` (its health check) exits 0 only when
every account logs in and the writer holds its role.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from appliance.mlflow_login import AUTHORIZATION_FUNCTION

ADMIN_USER = "admin"
WRITER_USER = "appliance-writer"
READER_USER = "appliance-reader"
WRITER_ROLE = "appliance-writer"
ROLE_WORKSPACE = "default"
"""MLflow scopes roles to a workspace; without workspaces enabled everything is in ``default``."""
WRITER_GRANTS = (("experiment", "*", "EDIT"), ("registered_model", "*", "EDIT"))
SECRETS = {
    ADMIN_USER: "mlflow_admin_password",
    WRITER_USER: "mlflow_writer_password",
    READER_USER: "mlflow_reader_password",
}
"""Account -> the secret holding its password."""
FLASK_SECRET = "mlflow_flask_secret_key"
"""The key MLflow's auth app signs its CSRF tokens with (``MLFLOW_FLASK_SERVER_SECRET_KEY``)."""
PASSWORD_ENV = {
    ADMIN_USER: "APPLIANCE_MLFLOW_ADMIN_PASSWORD",
    WRITER_USER: "APPLIANCE_MLFLOW_WRITER_PASSWORD",
    READER_USER: "APPLIANCE_MLFLOW_READER_PASSWORD",
}
"""How the job receives each password."""
EDGE_PREFIX = "appliance-edge-"
"""Every edge host's account is this and its inventory name; the job owns every account so named."""
EDGE_PASSWORDS_ENV = "APPLIANCE_MLFLOW_EDGE_PASSWORDS"
"""In a cluster: a JSON object of each edge host's account and its password (``{}`` with none).
Absent (a one-host stack): the job leaves edge accounts alone."""
AUTH_DB = "basic_auth.db"
"""The user store, beside MLflow's own database (``STATE/mlflow/``, the ``mlflow`` volume)."""
AUTH_DATABASE = "mlflow_auth"
"""In a cluster on PostgreSQL: the accounts' database, beside MLflow's own on the same server, so
every MLflow server (one per control host) checks the same accounts."""


def edge_account(host: str) -> str:
    """The MLflow account of the cluster's edge host ``host``."""
    return EDGE_PREFIX + host


def edge_secret(host: str) -> str:
    """The secret holding the password of ``host``'s account. Host names may hold ``.`` and ``-``,
    which secret names do not: those become ``_`` and a short hash of the name keeps two hosts
    that differ only there apart."""
    tag = hashlib.sha256(host.encode()).hexdigest()[:8]
    return f"mlflow_edge_{re.sub(r'[^A-Za-z0-9_]', '_', host)}_{tag}_password"


EDGE_SECRET = re.compile(r"mlflow_edge_\w+_[0-9a-f]{8}_password")
"""What every ``edge_secret`` looks like (the name's characters, its hash, ``_password``)."""


def forget_edge_secrets(names: Iterable[str], secrets: Any) -> list[str]:
    """Delete the password of every edge box no longer named (``names``: those the accounts job
    just ran with, so it deleted every other edge account); returns the secrets deleted.

    Kept, the file would bring the same password back with the name: a box given back to
    ``edge_boxes`` (or a new host given a retired host's name) would log in with what the retired
    box, a copy of it or an old backup still holds. Deleted, the name's next ``up`` makes a new
    one. Only after a run of the job that succeeded: while an account may still exist, its password
    stays in the state directory."""
    keep = {edge_secret(name) for name in names}
    gone = [name for name in secrets.names() if EDGE_SECRET.fullmatch(name) and name not in keep]
    for name in gone:
        secrets.remove(name)
    return gone


def edge_credentials(names: Iterable[str], secrets: Any) -> dict[str, str]:
    """Each edge box named (a cluster's ``edge`` hosts, the answers' ``edge_boxes``): its account
    and password, generated on first use."""
    return {edge_account(n): secrets.get(edge_secret(n)) for n in sorted(set(names))}


def edge_passwords(names: Iterable[str], secrets: Any) -> str:
    """The accounts job's ``APPLIANCE_MLFLOW_EDGE_PASSWORDS`` (``edge_credentials``); ``{}`` with
    none, so the job deletes any edge account left."""
    return json.dumps(edge_credentials(names, secrets), sort_keys=True)


def shared_auth_uri(ctx: Any) -> str | None:
    """The accounts' database when ``ctx`` renders a cluster host whose MLflow is on PostgreSQL
    (the first control host's, as this host dials it: ``appliance.addressing``); None otherwise.
    No password in it: MLflow's unit gets it as ``PGPASSWORD`` in its 0600 environment file."""
    cluster = ctx.answers.cluster
    if ctx.hosts is None or cluster is None or cluster.mlflow_backend != "postgresql":
        return None
    from appliance.cluster.units import DB_USER, PG_PORT, POSTGRESQL

    host = ctx.addressing.host(POSTGRESQL)
    return f"postgresql+psycopg://{DB_USER}@{host}:{PG_PORT}/{AUTH_DATABASE}"


def auth_ini(ctx: Any, services: Mapping[str, Any]) -> str:
    """``config_files`` generator: MLflow's auth config (``MLFLOW_AUTH_CONFIG_PATH``). The admin
    password is not here: MLflow reads it from ``MLFLOW_AUTH_ADMIN_PASSWORD``."""
    from appliance.render import CONTAINER_MLFLOW_DIR

    folder = CONTAINER_MLFLOW_DIR if ctx.in_containers else str(ctx.state_dir / "mlflow")
    shared = shared_auth_uri(ctx)
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": shared or f"sqlite:///{folder}/{AUTH_DB}",
        "admin_username": ADMIN_USER,
        "grant_default_workspace_access": "false",
        # The appliance's check (appliance/mlflow_login.py): the slow hash once per password, a
        # changed or deleted account refused at once on every server sharing the accounts.
        # MLflow's own cache, which keeps a login for a fixed time instead, stays off.
        "authorization_function": AUTHORIZATION_FUNCTION,
        "auth_cache_ttl_seconds": "0",
    }
    out = io.StringIO()
    out.write("# Generated by the appliance: MLflow's basic auth (users in the database below).\n")
    config.write(out)
    return out.getvalue()


def client_env(ctx: Any, account: str) -> dict[str, str]:
    """``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` of ``account`` for a client on this host, when
    its password exists (``up`` makes it); empty otherwise (a stack without MLflow's auth)."""
    name = SECRETS[account]
    if name not in ctx.secrets.names():
        return {}
    return {"MLFLOW_TRACKING_USERNAME": account, "MLFLOW_TRACKING_PASSWORD": ctx.secrets.get(name)}


class _Api:
    """The few calls of MLflow's auth REST API the job makes, as the admin."""

    def __init__(self, uri: str, admin_password: str) -> None:
        import httpx

        self.uri = uri.rstrip("/")
        self.client = httpx.Client(auth=(ADMIN_USER, admin_password), timeout=30, trust_env=False)

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kw: Any) -> Any:
        response = self.client.request(method, f"{self.uri}{path}", **kw)
        if response.status_code not in expect:
            raise SystemExit(f"MLflow {method} {path} answered {response.status_code}: {response.text[:300]}")
        return response

    def logs_in(self, user: str, password: str) -> bool:
        import httpx

        response = httpx.get(
            f"{self.uri}/api/2.0/mlflow/users/current", auth=(user, password), timeout=30, trust_env=False
        )
        return response.status_code == 200

    def writer_role(self) -> dict[str, Any] | None:
        roles = self.call("GET", "/api/3.0/mlflow/roles/list", params={"workspace": ROLE_WORKSPACE})
        return next((r for r in roles.json().get("roles", []) if r.get("name") == WRITER_ROLE), None)

    def user_roles(self, user: str) -> list[str]:
        roles = self.call("GET", "/api/3.0/mlflow/users/roles/list", params={"username": user})
        return [r.get("name", "") for r in roles.json().get("roles", [])]

    def usernames(self) -> list[str]:
        return [u["username"] for u in self.call("GET", "/api/2.0/mlflow/users/list").json().get("users", [])]


def _passwords() -> dict[str, str]:
    missing = [env for env in PASSWORD_ENV.values() if not os.environ.get(env)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: the stack passes the MLflow passwords to this job")
    return {user: os.environ[env] for user, env in PASSWORD_ENV.items()}


def _edge_passwords() -> dict[str, str] | None:
    """The edge boxes' accounts and passwords (None: not given, as when the job is run by hand;
    leave edge accounts as they are)."""
    text = os.environ.get(EDGE_PASSWORDS_ENV)
    if text is None:
        return None
    try:
        given = json.loads(text)
    except ValueError as err:
        raise SystemExit(f"{EDGE_PASSWORDS_ENV} is not JSON ({err}): `appliance up` writes it") from err
    if not isinstance(given, dict) or not all(
        isinstance(u, str) and u.startswith(EDGE_PREFIX) and isinstance(p, str) and p
        for u, p in given.items()
    ):
        raise SystemExit(f"{EDGE_PASSWORDS_ENV} must map {EDGE_PREFIX}HOST accounts to passwords")
    return given


def check(api: _Api, passwords: dict[str, str]) -> list[str]:
    """What is not as it should be (empty: every account logs in, the writer holds its role)."""
    problems = [f"{user} cannot log in" for user, pw in passwords.items() if not api.logs_in(user, pw)]
    if not problems and WRITER_ROLE not in api.user_roles(WRITER_USER):
        problems.append(f"{WRITER_USER} lacks the role {WRITER_ROLE}")
    return problems


def _ensure_user(api: _Api, user: str, password: str) -> list[str]:
    """Create ``user`` with ``password``, or reset a password that no longer matches its secret."""
    found = api.call("GET", "/api/2.0/mlflow/users/get", (200, 404), params={"username": user})
    if found.status_code == 404:
        api.call("POST", "/api/2.0/mlflow/users/create", json={"username": user, "password": password})
        return [f"created user {user}"]
    if not api.logs_in(user, password):
        api.call(
            "PATCH", "/api/2.0/mlflow/users/update-password", json={"username": user, "password": password}
        )
        return [f"reset the password of {user} to its secret"]
    return []


def ensure_edges(api: _Api, edges: dict[str, str]) -> list[str]:
    """Every edge account given, and no other: one whose host left the inventory is deleted."""
    done = [line for user, password in sorted(edges.items()) for line in _ensure_user(api, user, password)]
    for user in api.usernames():
        if user.startswith(EDGE_PREFIX) and user not in edges:
            api.call("DELETE", "/api/2.0/mlflow/users/delete", params={"username": user})
            done.append(f"deleted user {user} (its edge box is no longer in the inventory or edge_boxes)")
    return done


def ensure(api: _Api, passwords: dict[str, str], edges: dict[str, str] | None = None) -> list[str]:
    """Create or repair what is missing; returns what was done."""
    done = []
    for user in (WRITER_USER, READER_USER):
        done += _ensure_user(api, user, passwords[user])
    role = api.writer_role()
    if role is None:
        body = {
            "workspace": ROLE_WORKSPACE,
            "name": WRITER_ROLE,
            "description": "the stack's lifecycle writer",
        }
        role = api.call("POST", "/api/3.0/mlflow/roles/create", json=body).json()["role"]
        done.append(f"created role {WRITER_ROLE}")
    listed = api.call("GET", "/api/3.0/mlflow/roles/permissions/list", params={"role_id": str(role["id"])})
    have = {
        (p["resource_type"], p["resource_pattern"], p["permission"])
        for p in listed.json()["role_permissions"]
    }
    for kind, pattern, permission in WRITER_GRANTS:
        if (kind, pattern, permission) not in have:
            body = {
                "role_id": role["id"],
                "resource_type": kind,
                "resource_pattern": pattern,
                "permission": permission,
            }
            api.call("POST", "/api/3.0/mlflow/roles/permissions/add", json=body)
            done.append(f"granted {permission} on {kind} {pattern} to {WRITER_ROLE}")
    if WRITER_ROLE not in api.user_roles(WRITER_USER):
        api.call(
            "POST", "/api/3.0/mlflow/roles/assign", json={"username": WRITER_USER, "role_id": role["id"]}
        )
        done.append(f"assigned {WRITER_ROLE} to {WRITER_USER}")
    if edges is not None:
        done += ensure_edges(api, edges)
    return done


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.mlflow_auth", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 0 only when every account is in place")
    parser.add_argument("--uri", help="MLflow's URL (default: $MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    uri = args.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SystemExit("no MLflow URL: pass --uri or set MLFLOW_TRACKING_URI")
    import httpx

    passwords = _passwords()
    edges = _edge_passwords()
    api = _Api(uri, passwords[ADMIN_USER])
    try:
        if args.check:
            problems = check(api, passwords | (edges or {}))
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        for line in ensure(api, passwords, edges) or ["every MLflow account is already in place"]:
            print(line)
    except httpx.HTTPError as err:
        print(f"cannot reach MLflow at {uri}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Each edge box reads the registry with an account of its own: the rendered units give a cluster's
edge host only its own password (never the shared reader's), the accounts job is given every edge
account (the cluster's edge hosts and the standalone boxes of ``edge_boxes``, on one host or a
cluster), and the job creates, repairs and deletes edge accounts and no other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.answers import Answers
from appliance.cluster.engine import _forget_retired_edge_secrets
from appliance.cluster.inventory import Inventory
from appliance.cluster.units import render_hosts
from appliance.context import AppContext
from appliance.mlflow_auth import (
    EDGE_PASSWORDS_ENV,
    READER_USER,
    _Api,
    _edge_passwords,
    edge_account,
    edge_secret,
    ensure_edges,
    forget_edge_secrets,
)
from appliance.secrets_store import SecretStore, read_only

HOSTS = [
    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
    {"name": "srv1", "address": "10.0.0.2", "groups": ["serving"]},
    {"name": "edge-1.lan", "address": "10.0.0.9", "groups": ["edge"]},
    {"name": "edge_1_lan", "address": "10.0.0.10", "groups": ["edge"]},
]


def answers(hosts: list[dict[str, Any]] = HOSTS) -> Answers:
    return Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "models": [{"name": "iris"}],
            "components": {"workbench": False, "monitoring": False, "controller": False, "dashboards": False},
            "cluster": {"hosts": hosts, "venv": "/opt/appliance/venv"},
        }
    )


def serving_env(host_vars: dict[str, Any]) -> dict[str, str]:
    return dict(next(u for u in host_vars["appliance_serving_units"] if u["name"] == "serving")["env"])


def test_each_edge_host_gets_its_own_account_and_never_the_shared_readers_password(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    store = SecretStore(tmp_path / "secrets")
    reader = store.get("mlflow_reader_password")
    assert serving_env(per_host["srv1"])["MLFLOW_TRACKING_USERNAME"] == READER_USER
    passwords = set()
    for host in ("edge-1.lan", "edge_1_lan"):
        env = serving_env(per_host[host])
        assert env["MLFLOW_TRACKING_USERNAME"] == f"appliance-edge-{host}"
        assert env["MLFLOW_TRACKING_PASSWORD"] == store.get(edge_secret(host))
        assert reader not in repr(per_host[host]), host
        passwords.add(env["MLFLOW_TRACKING_PASSWORD"])
    assert len(passwords) == 2 and reader not in passwords
    assert (tmp_path / "secrets" / edge_secret("edge-1.lan")).stat().st_mode & 0o777 == 0o600


def test_the_accounts_job_is_given_every_edge_account_and_none_without_edge_hosts(tmp_path: Path) -> None:
    ctl = render_hosts(answers(), tmp_path / "secrets")["ctl1"]
    job = next(u for u in ctl["appliance_mlflow_units"] if u["name"] == "mlflow-users")
    store = SecretStore(tmp_path / "secrets")
    assert json.loads(job["env"][EDGE_PASSWORDS_ENV]) == {
        edge_account(h): store.get(edge_secret(h)) for h in ("edge-1.lan", "edge_1_lan")
    }
    alone = render_hosts(answers(HOSTS[:2]), tmp_path / "other")["ctl1"]
    job = next(u for u in alone["appliance_mlflow_units"] if u["name"] == "mlflow-users")
    assert job["env"][EDGE_PASSWORDS_ENV] == "{}"  # so an account left by a removed edge host goes


def test_edge_secret_names_are_valid_and_tell_similar_host_names_apart() -> None:
    names = {edge_secret(h) for h in ("edge-1.lan", "edge_1_lan", "edge-1-lan")}
    assert len(names) == 3
    assert all(n.replace("_", "").isalnum() for n in names), names


class FakeApi(_Api):
    """MLflow's user API in memory: the job's calls, what they did."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = dict(users)
        self.calls: list[tuple[str, str]] = []

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kw: Any) -> Any:
        self.calls.append((method, path))
        params, body = kw.get("params") or {}, kw.get("json") or {}
        user = params.get("username") or body.get("username")
        status, payload = 200, {}
        if path.endswith("/users/get"):
            status = 200 if user in self.users else 404
        elif path.endswith("/users/create") or path.endswith("/users/update-password"):
            self.users[user] = body["password"]
        elif path.endswith("/users/delete"):
            del self.users[user]
        elif path.endswith("/users/list"):
            payload = {"users": [{"username": u} for u in self.users]}
        assert status in expect, (method, path, status)
        return type("Answer", (), {"status_code": status, "json": lambda self: payload})()

    def logs_in(self, user: str, password: str) -> bool:
        return self.users.get(user) == password


def test_the_job_creates_repairs_and_deletes_edge_accounts_and_leaves_the_others() -> None:
    api = FakeApi(
        {"admin": "a", READER_USER: "r", "alice": "x", "appliance-edge-old": "o", "appliance-edge-b": "stale"}
    )
    done = ensure_edges(api, {"appliance-edge-a": "pa", "appliance-edge-b": "pb"})
    assert api.users == {
        "admin": "a",
        READER_USER: "r",
        "alice": "x",
        "appliance-edge-a": "pa",
        "appliance-edge-b": "pb",
    }
    assert done == [
        "created user appliance-edge-a",
        "reset the password of appliance-edge-b to its secret",
        "deleted user appliance-edge-old (its edge box is no longer in the inventory or edge_boxes)",
    ]
    api.calls.clear()
    assert ensure_edges(api, {"appliance-edge-a": "pa", "appliance-edge-b": "pb"}) == []
    assert not [c for c in api.calls if c[0] in ("POST", "PATCH", "DELETE")], api.calls


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("{}", {}),
        ('{"appliance-edge-a": "p"}', {"appliance-edge-a": "p"}),
        ('{"appliance-reader": "p"}', "must map"),
        ('{"appliance-edge-a": ""}', "must map"),
        ("[1]", "must map"),
        ("{", "is not JSON"),
    ],
)
def test_the_jobs_edge_list_is_read_strictly(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: Any
) -> None:
    if value is None:
        monkeypatch.delenv(EDGE_PASSWORDS_ENV, raising=False)
    else:
        monkeypatch.setenv(EDGE_PASSWORDS_ENV, value)
    if isinstance(expected, str):
        with pytest.raises(SystemExit, match=expected):
            _edge_passwords()
    else:
        assert _edge_passwords() == expected


def test_with_the_gateway_on_an_edge_host_reads_the_registry_through_it_and_gets_the_ca(
    tmp_path: Path,
) -> None:
    tls = answers().model_copy(update={"tls": Answers.model_validate({"tls": {"enabled": True}}).tls})
    per_host = render_hosts(tls, tmp_path / "secrets")
    env = serving_env(per_host["edge-1.lan"])
    assert env["MLFLOW_TRACKING_URI"] == "https://10.0.0.1:5443"  # ctl1 runs the gateway
    assert env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/var/lib/appliance/secrets/tls_ca_cert"
    assert "tls_ca_cert" in per_host["edge-1.lan"]["appliance_common_secrets"]
    assert "tls_ca_key" not in per_host["edge-1.lan"]["appliance_common_secrets"]
    assert serving_env(per_host["srv1"])["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"  # its own network
    plain = serving_env(render_hosts(answers(), tmp_path / "plain")["edge-1.lan"])
    assert (
        plain["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"
        and "MLFLOW_TRACKING_SERVER_CERT_PATH" not in plain
    )


def _one_host_job_env(tmp_path: Path, boxes: list[str]) -> dict[str, str]:
    from appliance.context import AppContext
    from appliance.render import render_stack

    data = {"object_store": {"kind": "filesystem"}, "components": {"workbench": False}, "edge_boxes": boxes}
    ctx = AppContext(Answers.model_validate(data), tmp_path / "state")
    return dict(render_stack(ctx)["mlflow-users"].env)


def test_a_one_host_stack_gives_its_accounts_job_each_standalone_edge_box_and_none_without(
    tmp_path: Path,
) -> None:
    env = _one_host_job_env(tmp_path, ["shop-12", "shop-13"])
    store = SecretStore(tmp_path / "state" / "secrets")
    assert json.loads(env[EDGE_PASSWORDS_ENV]) == {
        "appliance-edge-shop-12": store.get(edge_secret("shop-12")),
        "appliance-edge-shop-13": store.get(edge_secret("shop-13")),
    }
    assert (tmp_path / "state" / "secrets" / edge_secret("shop-12")).stat().st_mode & 0o777 == 0o600
    assert store.get(edge_secret("shop-12")) != store.get("mlflow_reader_password")
    # a box taken out of edge_boxes: the job is told of the other alone, and deletes its account
    env = _one_host_job_env(tmp_path, ["shop-13"])
    assert list(json.loads(env[EDGE_PASSWORDS_ENV])) == ["appliance-edge-shop-13"]
    assert _one_host_job_env(tmp_path / "none", [])[EDGE_PASSWORDS_ENV] == "{}"


def test_a_clusters_accounts_job_is_given_its_edge_hosts_and_the_standalone_boxes(tmp_path: Path) -> None:
    data = answers().model_dump(mode="json", exclude_unset=True) | {"edge_boxes": ["shop-12"]}
    ctl = render_hosts(Answers.model_validate(data), tmp_path / "secrets")["ctl1"]
    job = next(u for u in ctl["appliance_mlflow_units"] if u["name"] == "mlflow-users")
    assert sorted(json.loads(job["env"][EDGE_PASSWORDS_ENV])) == [
        "appliance-edge-edge-1.lan",
        "appliance-edge-edge_1_lan",
        "appliance-edge-shop-12",
    ]


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (["../x"], "edge box name '../x'"),
        (["a", "a"], "must be unique: a"),
        ([""], "is empty"),
        (["a", {"name": "a", "models": ["wine"]}], "must be unique: a"),
        ([{"name": "../x", "models": ["wine"]}], "edge box name '../x'"),
        ([{"name": "a", "models": []}], "at least 1 item"),
        ([{"name": "a", "models": ["../wine"]}], "edge box model '../wine'"),
        ([{"name": "a", "models": ["wine", "wine"]}], "edge box models must be unique"),
        ([{"name": "a", "modles": ["wine"]}], "Extra inputs are not permitted"),
    ],
)
def test_edge_box_names_are_checked_before_anything_runs(boxes: list[object], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Answers.model_validate({"edge_boxes": boxes})


def test_the_password_of_an_edge_box_gone_is_deleted_so_its_name_given_back_gets_a_new_one(
    tmp_path: Path,
) -> None:
    store = SecretStore(tmp_path / "secrets")
    old = {box: store.get(edge_secret(box)) for box in ("shop-12", "shop-13", "edge-1.lan")}
    others = {name: store.get(name) for name in ("mlflow_reader_password", "mlflow_writer_password")}
    store.put("mlflow_edge_notes", "not an edge box's password")
    with read_only():  # plan and status delete nothing
        assert forget_edge_secrets(["shop-13"], store) == sorted(
            edge_secret(b) for b in ("shop-12", "edge-1.lan")
        )
    assert all(store.get(edge_secret(box)) == password for box, password in old.items())
    gone = forget_edge_secrets(["shop-13"], store)
    assert sorted(gone) == sorted(edge_secret(b) for b in ("shop-12", "edge-1.lan"))
    assert store.get(edge_secret("shop-13")) == old["shop-13"]
    assert all(store.get(name) == value for name, value in others.items())
    assert store.get("mlflow_edge_notes") == "not an edge box's password"
    assert store.get(edge_secret("shop-12")) != old["shop-12"]  # the name back: a new password


@pytest.mark.parametrize(
    ("reached_end", "kept"),
    [({"ctl1", "srv1", "edge-1.lan"}, False), ({"srv1", "edge-1.lan"}, True), (set(), True)],
)
def test_a_cluster_up_deletes_a_removed_edge_hosts_password_only_once_the_accounts_job_ran(
    tmp_path: Path, reached_end: set[str], kept: bool
) -> None:
    """The host of MLflow's accounts job (ctl1) reached the end of the run: the job deleted the
    account of the edge host no longer in the inventory, and its password goes. Left out of the
    run (``--limit``) or failed there: the account may still exist, the password stays."""
    ctx = AppContext.create(answers(HOSTS[:3]), None, tmp_path / "state")
    gone = ctx.secrets.get(edge_secret("edge_1_lan"))  # the host taken out of the inventory
    host_vars = render_hosts(ctx.answers, ctx.state_dir / "secrets")
    staying = ctx.secrets.get(edge_secret("edge-1.lan"))
    _forget_retired_edge_secrets(ctx, Inventory(ctx.answers.cluster), host_vars, reached_end)
    assert (ctx.state_dir / "secrets" / edge_secret("edge_1_lan")).exists() is kept
    assert ctx.secrets.get(edge_secret("edge-1.lan")) == staying
    if kept:
        assert ctx.secrets.get(edge_secret("edge_1_lan")) == gone

"""The bundled store's decisions, without a server: which key each class gets and what it may
do, how ``auto`` chooses, which addressing style each endpoint needs, and which fix each refusal
names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.context import AppContext, resolve_store_kind
from appliance.dataconn.client import addressing_style
from appliance.dataconn.errors import StoreAccessError
from appliance.objectstore.identities import actions, identity_of, s3_config


def test_auto_prefers_a_configured_minio_then_seaweedfs(tmp_path: Path) -> None:
    minio = tmp_path / "minio"
    minio.write_text("#!/bin/sh\n")
    assert resolve_store_kind(Answers(object_store={"minio_binary": str(minio)})) == "minio"  # type: ignore[arg-type]
    assert resolve_store_kind(Answers()) == "seaweedfs"  # the lab install's weed is beside python
    on_podman = Answers(runtime="podman", object_store={"minio_binary": str(tmp_path / "absent")})  # type: ignore[arg-type]
    assert resolve_store_kind(on_podman) == "seaweedfs"  # its image
    assert resolve_store_kind(Answers(object_store={"kind": "filesystem"})) == "filesystem"  # type: ignore[arg-type]


def test_auto_on_the_edge_profile_runs_no_store_unless_the_state_already_ran_one(tmp_path: Path) -> None:
    """An edge box serves a file, another store's s3:// URI or a central registry: no store of its
    own (SeaweedFS was half its memory); asked for by name, or already run there, it stays."""
    from appliance.render import render_stack

    edge = Answers(profile="edge")
    assert resolve_store_kind(edge) == resolve_store_kind(edge, tmp_path / "new") == "filesystem"
    assert resolve_store_kind(Answers(profile="edge", object_store={"kind": "seaweedfs"})) == "seaweedfs"  # type: ignore[arg-type]
    assert resolve_store_kind(Answers()) == "seaweedfs"  # the lab profile keeps its store
    services = render_stack(AppContext(edge, tmp_path / "new"))
    assert not {"seaweedfs", "minio", "buckets"} & set(services)
    assert services["serving"].env["APPLIANCE_DATA_KIND"] == "filesystem"
    assert not (tmp_path / "new" / "secrets" / "seaweedfs_admin_secret_key").exists()

    # an edge state from before this rule: its store's keys are there, so are its objects
    older = AppContext(Answers(profile="edge", object_store={"kind": "seaweedfs"}), tmp_path / "old")  # type: ignore[arg-type]
    assert "seaweedfs" in render_stack(older)  # makes the keys, as that release's up did
    assert resolve_store_kind(edge, tmp_path / "old") == "seaweedfs"
    kept = render_stack(AppContext(edge, tmp_path / "old"))
    assert "seaweedfs" in kept and kept["serving"].env["APPLIANCE_DATA_KIND"] == "s3"


def test_each_class_reaches_only_its_buckets() -> None:
    assert actions("reader", "d", "m", "f") == ["Read:m", "List:m"]
    writer = actions("writer", "d", "m", "f")
    assert {a.split(":")[1] for a in writer} == {"d", "m", "f"} and not any(
        a.startswith("Admin") for a in writer
    )
    assert "Admin" in actions("admin", "d", "m", "f")
    with pytest.raises(ValueError, match="unknown identity 'root'"):
        actions("root", "d", "m", "f")
    assert identity_of("serving") == "reader" and identity_of("buckets") == "admin"
    assert identity_of("controller") == identity_of("mlflow") == identity_of("workbench") == "writer"
    assert identity_of("a-new-service") == "reader"  # least privilege until listed


def test_the_identities_file_follows_the_answers_bucket_names(tmp_path: Path) -> None:
    store = {"kind": "seaweedfs", "models_bucket": "prod-models", "datasets_bucket": "prod-data"}
    ctx = AppContext(Answers(object_store=store), tmp_path)  # type: ignore[arg-type]
    doc = json.loads(s3_config(ctx))
    by_name = {i["name"]: i for i in doc["identities"]}
    assert set(by_name) == {"admin", "writer", "reader"}
    assert by_name["reader"]["actions"] == ["Read:prod-models", "List:prod-models"]
    assert by_name["reader"]["credentials"][0]["secretKey"] == ctx.secrets.get("seaweedfs_reader_secret_key")
    assert ctx.s3_credentials("reader") == (
        "appliance-reader",
        ctx.secrets.get("seaweedfs_reader_secret_key"),
    )


@pytest.mark.parametrize(
    ("endpoint", "style"),
    [
        ("http://127.0.0.1:8333", "path"),
        ("http://seaweedfs:8333", "path"),
        ("https://minio.example.org", "path"),
        ("https://s3.eu-west-1.amazonaws.com", "virtual"),
        (None, "virtual"),
        ("https://notamazonaws.com.example", "path"),
    ],
)
def test_addressing_style_by_endpoint(endpoint: str | None, style: str) -> None:
    assert addressing_style(endpoint) == style


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        ("InvalidAccessKeyId", "does not know these keys"),
        ("SignatureDoesNotMatch", "does not know these keys"),
        ("AccessDenied", "reaches only its own buckets"),
        ("InvalidBucketName", "3-63 lowercase"),
        ("InsufficientStorage", "free space"),
    ],
)
def test_each_refusal_names_its_fix(code: str, fix: str) -> None:
    err = StoreAccessError("s3://models at http://127.0.0.1:8333", f"{code}: refused", code)
    assert fix in str(err) and "http://127.0.0.1:8333" in str(err)

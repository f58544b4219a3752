"""The container runtimes' pure parts: addresses inside containers, state mapping from both
engines' inspect formats, restart policies, GPU choice and image catalog errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.errors import ApplianceError
from appliance.images.catalog import CATALOG, get_image
from appliance.images.wheelhouse import _local_requirements
from appliance.runtimes.containers_common import (
    HASH_LABEL,
    ONESHOT_LABEL,
    SERVICE_LABEL,
    observed_from,
    parse_started,
    restart_policy,
    stack_hash,
    wants_gpu,
)
from appliance.stack import HealthCheck, RenderedService

LABELS = {SERVICE_LABEL: "mlflow", HASH_LABEL: "abc123"}


def service(**changes: object) -> RenderedService:
    base = dict(
        name="serving",
        description="",
        command=["x"],
        container_command=["x"],
        image="img",
        env={},
        ports={},
        publish_address="127.0.0.1",
        volumes={},
        files={},
        health=HealthCheck(tcp="127.0.0.1:1"),
        depends_on=[],
        restart="always",
        oneshot=False,
        gpu=True,
        url=None,
        metrics=None,
    )
    return RenderedService.model_validate(base | changes)


def test_timestamps_with_nanoseconds_and_offsets() -> None:
    assert parse_started("1970-01-01T00:00:10.500000000Z") == pytest.approx(10.5)
    assert parse_started("1970-01-01T01:00:10+01:00") == pytest.approx(10)
    assert parse_started("0001-01-01T00:00:00Z") is None
    assert parse_started(None) is None


def test_docker_inspect_state() -> None:
    attrs = {"Id": "c1", "State": {"Status": "running", "Pid": 42, "StartedAt": "1970-01-01T00:01:00Z"}}
    seen = observed_from(attrs, LABELS)
    assert (seen.name, seen.state, seen.pid, seen.config_hash, seen.ref) == (
        "mlflow",
        "running",
        42,
        "abc123",
        "c1",
    )
    assert seen.started_at == 60


def test_podman_list_state_is_a_word_beside_top_level_fields() -> None:
    attrs = {"Id": "c2", "State": "exited", "Status": "Exited (137)", "Pid": 0, "StartedAt": 5}
    seen = observed_from(attrs, LABELS)
    assert (seen.state, seen.pid, seen.started_at) == ("exited", None, None)


@pytest.mark.parametrize(("code", "state"), [(0, "done"), (3, "failed")])
def test_oneshot_exit_code_decides_done_or_failed(code: int, state: str) -> None:
    attrs = {"State": {"Status": "exited", "ExitCode": code}}
    assert observed_from(attrs, LABELS | {ONESHOT_LABEL: "true"}).state == state


def test_unknown_engine_state_is_failed_not_running() -> None:
    assert observed_from({"State": {"Status": "weird"}}, LABELS).state == "failed"


def test_restart_policies() -> None:
    assert restart_policy("always", False) == {"Name": "always"}
    assert restart_policy("on-failure", False) == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert restart_policy("no", False) == {"Name": "no"}
    assert restart_policy("always", True) == {"Name": "no"}, "a job never restarts"


def test_gpu_only_when_asked_allowed_and_listed() -> None:
    on = Answers.model_validate({"gpu": {"mode": "on"}})
    off = Answers.model_validate({"gpu": {"mode": "off"}})
    assert wants_gpu(service(), on)
    assert not wants_gpu(service(), off)
    assert not wants_gpu(service(gpu=False), on)
    assert not wants_gpu(service(name="mlflow"), on), "mlflow is not in gpu.services"


def test_stack_hash_depends_on_the_state_dir(tmp_path: Path) -> None:
    assert stack_hash(tmp_path / "a") != stack_hash(tmp_path / "b")
    assert stack_hash(tmp_path / "a") == stack_hash(tmp_path / "x" / ".." / "a")


def test_unknown_image_and_missing_gpu_flavour_say_what_exists() -> None:
    with pytest.raises(ApplianceError, match=r"use one of: .*mlflow"):
        get_image("mlfow")
    with pytest.raises(ApplianceError, match="no gpu flavour") as err:
        get_image("mlflow").requirements_for("gpu")
    assert "serving" in str(err.value)


def test_gpu_flavour_tags_differ_and_every_image_has_a_containerfile() -> None:
    spec = get_image("serving")
    assert spec.tag("cpu") != spec.tag("gpu")
    assert "onnxruntime-gpu[cuda,cudnn]" in spec.requirements_for("gpu")  # with the CUDA libraries it loads
    assert all(s.containerfile.is_file() for s in CATALOG.values())


def test_project_requirement_becomes_the_wheel_with_extras(tmp_path: Path) -> None:
    wheel = tmp_path / "mlops_appliance-0.1.0-py3-none-any.whl"
    assert _local_requirements(["mlops-appliance[serving]", "boto3"], wheel) == [f"{wheel}[serving]", "boto3"]


def test_cdi_spec_for_nvidia_is_found_only_when_it_names_the_gpu_kind(tmp_path: Path) -> None:
    from appliance.images.preflight import cdi_has_nvidia, gpu_check

    (tmp_path / "other.yaml").write_text("kind: vendor.com/fpga\n")
    assert not cdi_has_nvidia((tmp_path, tmp_path / "absent"))
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    assert cdi_has_nvidia((tmp_path,))
    assert gpu_check("podman", []).status == "pass"


def test_only_the_secret_files_a_container_names_are_mounted(tmp_path: Path) -> None:
    from appliance.runtimes.containers_common import ContainerRuntime

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("serving_token", "controller_webhook_token", "minio_root_password"):
        (secrets / name).write_text("x")
    runtime = ContainerRuntime(tmp_path, Answers())
    svc = service(
        container_command=["serve", "--token-file", "/var/lib/appliance/secrets/serving_token"],
        files={"am.yml": f"credentials_file: {secrets}/controller_webhook_token\n"},
    )
    assert runtime.secret_files(svc) == {
        "/var/lib/appliance/secrets/serving_token": secrets / "serving_token",
        f"{secrets}/controller_webhook_token": secrets / "controller_webhook_token",
    }
    assert runtime.secret_files(service()) == {}

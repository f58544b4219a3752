"""Images the stack names: upstream ones pinned by tag and digest, references with a digest pulled
as written by both engines' clients, and a container's command passed as its whole argv."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from appliance.answers import Answers
from appliance.runtimes.containers_common import ContainerRuntime
from appliance.stack import load_stack
from tests.unit.test_container_common import service

PINNED = re.compile(
    r"^[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9._-]+)+"  # registry/name
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}@sha256:[0-9a-f]{64}$"  # :tag@digest
)
DIGEST_REF = (
    "quay.io/prometheus/prometheus:v2.53.2"
    "@sha256:cafe963e591c872d38f3ea41ff8eb22cee97917b7c97b5c0ccd43a419f11f613"
)


def upstream_images() -> dict[str, str]:
    return {
        name: spec.image
        for name, spec in load_stack().items()
        if spec.image and not spec.image.startswith("localhost/")
    }


def test_every_upstream_image_in_the_stack_is_pinned_by_tag_and_digest() -> None:
    images = upstream_images()
    assert {"minio", "node-exporter", "prometheus", "alertmanager", "grafana"} <= set(images)
    unpinned = {name: image for name, image in images.items() if not PINNED.match(image)}
    assert not unpinned, f"upstream images need name:tag@sha256:<64 hex> (the index digest): {unpinned}"


class _NotFound(Exception):
    pass


class _Images:
    def __init__(self) -> None:
        self.pulled: list[str] = []

    def get(self, ref: str) -> Any:
        if ref not in self.pulled:
            raise _NotFound(ref)
        return ref

    def pull(self, ref: str) -> None:
        self.pulled.append(ref)


class _Client:
    def __init__(self) -> None:
        self.images = _Images()


def test_a_digest_reference_is_pulled_as_written(tmp_path: Path) -> None:
    runtime = ContainerRuntime(tmp_path, Answers())
    runtime.not_found = (_NotFound,)
    runtime._client = client = _Client()
    assert runtime._ensure_image(DIGEST_REF) == DIGEST_REF
    assert client.images.pulled == [DIGEST_REF]


def test_an_override_replaces_a_digest_pinned_image(tmp_path: Path) -> None:
    override = "localhost/appliance-prometheus-debian:latest"
    prometheus = service(name="prometheus", image=DIGEST_REF)
    answers = Answers.model_validate({"images": {"prometheus": override}})
    assert ContainerRuntime(tmp_path, answers).image_for(prometheus) == override
    assert ContainerRuntime(tmp_path, Answers()).image_for(prometheus) == DIGEST_REF


def test_podman_client_pulls_the_reference_with_its_digest() -> None:
    from podman.domain.images_manager import ImagesManager

    class Response:
        def raise_for_status(self, not_found: Any = None) -> None:
            pass

        def iter_lines(self) -> list[bytes]:
            return []

    class Api:
        params: dict[str, Any] = {}

        def post(self, path: str, params: dict[str, Any], **_: Any) -> Response:
            Api.params = params
            return Response()

    ImagesManager(client=Api()).pull(DIGEST_REF)
    assert Api.params["reference"] == DIGEST_REF


def test_docker_client_pulls_by_digest() -> None:
    from docker.utils import parse_repository_tag

    # docker-py sends fromImage=name:tag, tag=sha256:...; the daemon pulls name@digest.
    name, digest = DIGEST_REF.rsplit("@", 1)
    assert parse_repository_tag(DIGEST_REF) == (name, digest)


@pytest.mark.parametrize(
    ("argv", "entrypoint", "command"),
    [
        (["/bin/prometheus", "--config.file=x"], ["/bin/prometheus"], ["--config.file=x"]),
        (["minio"], ["minio"], []),
    ],
)
def test_the_container_command_is_the_whole_argv_whatever_the_entrypoint(
    tmp_path: Path, argv: list[str], entrypoint: list[str], command: list[str]
) -> None:
    runtime = ContainerRuntime(tmp_path, Answers())
    kwargs = runtime._spec(service(container_command=argv), "img")
    assert (kwargs["entrypoint"], kwargs["command"]) == (entrypoint, command)


def test_images_list_shows_a_pinned_reference_with_a_short_digest() -> None:
    from appliance.images.build import short_ref

    assert short_ref(DIGEST_REF) == "quay.io/prometheus/prometheus:v2.53.2@sha256:cafe963e591c"
    assert short_ref("localhost/appliance-mlflow:latest") == "localhost/appliance-mlflow:latest"


def test_the_monitoring_services_run_as_root_in_containers_and_others_as_their_image_says(
    tmp_path: Path,
) -> None:
    specs = load_stack()
    as_root = {n for n, s in specs.items() if s.container_user == "0"}
    assert {"node-exporter", "prometheus", "alertmanager"} <= as_root
    runtime = ContainerRuntime(tmp_path, Answers())
    assert runtime._spec(service(container_user="0"), "img")["user"] == "0"
    assert "user" not in runtime._spec(service(), "img")
    assert service(container_user="0").config_hash != service().config_hash

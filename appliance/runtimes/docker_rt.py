"""The docker runtime: services as containers through the Docker SDK.

The daemon is ``DOCKER_HOST`` or the default socket. A user-defined bridge network gives DNS
between containers; each joins it with its service name as alias before it starts. GPUs pass
through a device request (``count=-1``, capability ``gpu``), which needs the NVIDIA container
toolkit registered with dockerd.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.answers import Answers
from appliance.runtimes.containers_common import ContainerRuntime, unavailable


class DockerRuntime(ContainerRuntime):
    """Containers under dockerd, one labelled network per state directory."""

    name = "docker"

    def __init__(self, state_dir: Path, answers: Answers) -> None:
        import docker.errors

        super().__init__(state_dir, answers)
        self.not_found = (docker.errors.NotFound,)
        self.api_error = (docker.errors.APIError,)

    def connect(self) -> Any:
        import docker

        try:
            client = docker.from_env()
            client.ping()
        except Exception as err:  # any transport error means the same thing to the user
            raise unavailable("docker", "DOCKER_HOST or /var/run/docker.sock", err) from err
        return client

    def network_options(self) -> dict[str, Any]:
        return {"driver": "bridge"}

    def attach(self, kwargs: dict[str, Any], alias: str) -> None:
        kwargs["network"] = self.network
        kwargs["networking_config"] = {self.network: self.client.api.create_endpoint_config(aliases=[alias])}

    def gpu_options(self) -> dict[str, Any]:
        import docker.types

        return {"device_requests": [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]}

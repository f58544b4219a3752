"""The podman runtime: services as containers through podman's REST API (podman-py).

The API socket is ``CONTAINER_HOST`` or ``/run/podman/podman.sock`` (started by
scripts/setup-containers.sh with ``podman system service --time=0``). The stack network has DNS
(netavark + aardvark-dns) and every container answers there under its service name. GPUs pass
through CDI (``nvidia.com/gpu=all``), the NVIDIA container toolkit's device spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from appliance.answers import Answers
from appliance.runtimes.containers_common import ContainerRuntime, unavailable

DEFAULT_SOCKET = "unix:///run/podman/podman.sock"


class PodmanRuntime(ContainerRuntime):
    """Containers under podman, one labelled network per state directory."""

    name = "podman"

    def __init__(self, state_dir: Path, answers: Answers) -> None:
        import podman.errors

        super().__init__(state_dir, answers)
        self.url = os.environ.get("CONTAINER_HOST", DEFAULT_SOCKET)
        # images.get raises ImageNotFound, which podman-py does not derive from NotFound
        self.not_found = (podman.errors.NotFound, podman.errors.ImageNotFound)
        self.api_error = (podman.errors.APIError,)

    def connect(self) -> Any:
        import podman

        try:
            client = podman.PodmanClient(base_url=self.url)
            client.ping()
        except Exception as err:  # any transport error means the same thing to the user
            raise unavailable("podman", self.url, err) from err
        return client

    def network_options(self) -> dict[str, Any]:
        return {"dns_enabled": True}

    def attach(self, kwargs: dict[str, Any], alias: str) -> None:
        kwargs["networks"] = {self.network: {"aliases": [alias]}}

    def gpu_options(self) -> dict[str, Any]:
        return {"devices": ["nvidia.com/gpu=all"]}

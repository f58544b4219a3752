"""Runtimes: how services run (host processes under supervisord now; containers later).

Kept import-light (the launcher lives here and starts with every service): ``get_runtime``
imports the chosen implementation only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.context import AppContext
    from appliance.runtimes.base import Runtime


def get_runtime(ctx: AppContext) -> Runtime:
    """The runtime the answers file chose."""
    if ctx.answers.runtime == "local":
        from appliance.runtimes.local import LocalRuntime

        return LocalRuntime(ctx.state_dir)
    if ctx.answers.runtime == "podman":
        from appliance.runtimes.podman_rt import PodmanRuntime

        return PodmanRuntime(ctx.state_dir, ctx.answers)
    if ctx.answers.runtime == "docker":
        from appliance.runtimes.docker_rt import DockerRuntime

        return DockerRuntime(ctx.state_dir, ctx.answers)
    raise NotImplementedError(ctx.answers.runtime)

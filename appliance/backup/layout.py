"""Where each part of the state lives for a runtime, so an archive is runtime-neutral.

An archive names members by part (``mlflow/mlflow.db``, ``data/datasets/...``), never by host
path. On the local runtime the parts are folders of the state directory; on podman and docker
the services keep them in the stack's named volumes (``mlflow`` for MLflow's folder, ``state`` for
the data store and pipeline records, ``workbench`` for notebooks), which this module finds by
their mount points on the host. Secrets and the answers file always stay on the host, in the
state directory, on every runtime. That mapping is what lets a backup from the local runtime be
restored onto podman and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.context import AppContext
from appliance.errors import ApplianceError

FOLDER_PARTS = ("mlflow", "data", "controller", "workbench")
"""Parts that are folders on the runtime's side; each maps to one directory."""
SKIP = {
    "mlflow": ("mlflow.db", "basic_auth.db"),  # taken with SQLite's backup API instead
    "controller": ("runs.db", "locks"),
    "workbench": (".jupyter/runtime",),
}
"""Paths inside a part that are not copied as files (snapshotted otherwise, or transient)."""
SQLITE = {"mlflow": ("mlflow.db", "basic_auth.db"), "controller": ("runs.db",)}
"""SQLite databases, copied with the online backup API (consistent while their writers run)."""


@dataclass(frozen=True)
class Layout:
    """Host directories of each part for one state directory and runtime."""

    state_dir: Path
    folders: dict[str, Path]

    @property
    def secrets(self) -> Path:
        return self.state_dir / "secrets"


def local_layout(state_dir: Path) -> Layout:
    return Layout(state_dir, {part: state_dir / part for part in FOLDER_PARTS})


VOLUMES = {"mlflow": ("mlflow", ""), "data": ("state", "data"), "controller": ("state", "controller")}
VOLUMES |= {"workbench": ("workbench", "")}
"""Part -> (volume, folder inside it) on the container runtimes (see stacks/services.yaml)."""


def layout_for(ctx: AppContext, runtime: str | None = None, create: bool = False) -> Layout:
    """The layout of ``ctx``'s stack on ``runtime`` (default: the answers' runtime). On a
    container runtime, ``create`` makes missing volumes (restore); otherwise a missing volume's
    parts are left out (nothing to back up)."""
    name = runtime or ctx.answers.runtime
    if name == "local":
        return local_layout(ctx.state_dir)
    from appliance.runtimes import get_runtime
    from appliance.runtimes.containers_common import ContainerRuntime

    rt = get_runtime(ctx) if runtime is None else _runtime_named(ctx, name)
    if not isinstance(rt, ContainerRuntime):
        raise ApplianceError(f"runtime {name!r} keeps no volumes", fix="use local, podman or docker")
    rt.ensure_ready()
    folders: dict[str, Path] = {}
    for part, (volume, inside) in VOLUMES.items():
        mount = _mountpoint(rt, volume, create)
        if mount is not None:
            folders[part] = mount / inside if inside else mount
    return Layout(ctx.state_dir, folders)


def stack_objects(ctx: AppContext) -> set[tuple[str, str]]:
    """The stack's volumes and networks that exist now, as (kind, name); none on the local
    runtime: what a restore that fails must leave as it found."""
    if ctx.answers.runtime == "local":
        return set()
    from appliance.runtimes import get_runtime
    from appliance.runtimes.containers_common import STACK_LABEL

    rt: Any = get_runtime(ctx)  # a container runtime: the local one returned above
    rt.client.ping()  # not ensure_ready(), which would make the stack's network before it is seen
    label = {"label": f"{STACK_LABEL}={rt.stack}"}
    volumes = {("volume", v.name) for v in rt.client.volumes.list(filters=label)}
    return volumes | {("network", n.name) for n in rt.client.networks.list(filters=label)}


def remove_made_since(ctx: AppContext, before: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove the stack's volumes and networks made since ``before`` (``stack_objects``)."""
    if ctx.answers.runtime == "local":
        return []
    from appliance.runtimes import get_runtime

    rt: Any = get_runtime(ctx)  # a container runtime: the local one returned above
    made = sorted(stack_objects(ctx) - before)
    for kind, name in made:
        if kind == "volume":
            rt.client.volumes.get(name).remove(force=True)
        else:
            rt.client.networks.get(name).remove()
    return made


def _runtime_named(ctx: AppContext, name: str) -> Any:
    from appliance.runtimes import get_runtime

    answers = ctx.answers.model_copy(update={"runtime": name})
    return get_runtime(AppContext(answers, ctx.state_dir, ctx.answers_path))


def _mountpoint(rt: Any, volume: str, create: bool) -> Path | None:
    name = f"appliance-{rt.stack}-{volume}"
    if create:
        name = rt._volume(volume)
    try:
        attrs = rt.client.volumes.get(name).attrs
    except rt.not_found:
        return None
    mount = attrs.get("Mountpoint") or attrs.get("mountpoint")
    if not mount or not Path(mount).is_dir():
        raise ApplianceError(
            f"volume {name} has no mount point this process can reach ({mount!r})",
            fix="run the command as the user that runs the containers (root for the system socket)",
        )
    return Path(mount)

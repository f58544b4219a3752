"""The bundled object store (SeaweedFS or MinIO) during a restore: an empty data folder, the
store started alone, the archive's objects uploaded through its S3 API, the store stopped. A
backup of a stopped stack starts the store alone the same way, to read the objects.

Why objects and not the store's data folder: a backup is taken while the stack runs, and the
store's folder is then a moving target. SeaweedFS keeps its filer's metadata in LevelDB (a
write-ahead log and compacting tables) beside volume files and their indexes; MinIO keeps
``xl.meta`` files beside the parts. A file-by-file copy of either taken during writes can pair
metadata with data from different moments, and neither store offers a way to pause its writers
that ``backup`` could use without stopping serving. Reading every object through S3
(``snapshot.s3_entries``) gives each object whole, as the store acknowledged it, and the archive
stays store-neutral: one taken from MinIO restores onto SeaweedFS or an external S3 store. The
cost is at restore time: the store must run, so restore starts it alone (the stack is down, or the
target is new), on a fresh folder so no object of the replaced stack survives, and stops it after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from appliance.context import AppContext
from appliance.errors import ApplianceError, PreflightError

BUNDLED = ("seaweedfs", "minio")
"""Store kinds the stack runs itself; their service has the kind's name in stacks/services.yaml."""


def is_bundled(ctx: AppContext) -> bool:
    return ctx.store_kind in BUNDLED and ctx.answers.components.object_store


def data_folder(ctx: AppContext, create: bool = False) -> Path:
    """The host folder the bundled store keeps its data in: ``STATE/<kind>`` on the local runtime,
    the stack's ``<kind>`` volume on podman and docker (its mount point, as for the other parts)."""
    kind = ctx.store_kind
    if ctx.answers.runtime == "local":
        return ctx.state_dir / kind
    from appliance.backup.layout import _mountpoint
    from appliance.runtimes import get_runtime

    rt = get_runtime(ctx)
    rt.ensure_ready()
    mount = _mountpoint(rt, kind, create)
    if mount is None:
        raise ApplianceError(f"the stack has no {kind} volume", fix="run `appliance up` once, then restore")
    return mount


def _store_only(ctx: AppContext) -> AppContext:
    """``ctx`` with every component but the object store off: the stack ``up`` would render for a
    store alone (the same command, config files and keys as in the full stack)."""
    components = ctx.answers.components.model_copy(
        update={name: name == "object_store" for name in type(ctx.answers.components).model_fields}
    )
    answers = ctx.answers.model_copy(update={"components": components})
    return AppContext(answers, ctx.state_dir, None)


@contextlib.contextmanager
def running_alone(ctx: AppContext) -> Iterator[None]:
    """Start the bundled store (and nothing else), wait for its health check, yield, stop it.

    The engine's own pieces (render, plan, apply with the health gate, the runtime) do the work;
    ``Engine.up`` itself is not called because it stamps the state with this version and refuses
    a state directory in the middle of a rollback, which is exactly when restore runs this. The
    store's preflight runs first (its ports must be free: the original stack, on this machine,
    must be down)."""
    from appliance.apply import Applier
    from appliance.engine import Engine
    from appliance.plan import plan, plan_down

    engine = Engine(_store_only(ctx))
    desired = {name: svc for name, svc in engine.desired.items() if name == ctx.store_kind}
    if not desired:
        raise ApplianceError(
            f"the stack renders no {ctx.store_kind} service to restore the objects into",
            fix="check object_store and components.object_store in the archive's answers file",
        )
    failures = [c for c in engine.preflight() if c.status == "fail"]
    if failures:  # a port still held by the replaced stack, say: told now, not after the health wait
        raise PreflightError([(c.name, c.detail, c.fix) for c in failures])
    engine.runtime.ensure_ready()
    timeout = ctx.answers.health_timeout_seconds
    try:
        Applier(engine.runtime, desired, timeout).run(plan(desired, engine.observed()))
        yield
    finally:
        Applier(engine.runtime, desired, 30).run(plan_down(desired, engine.observed()))
        if not any(seen.running and seen.state != "done" for seen in engine.observed().values()):
            engine.runtime.shutdown()  # the supervisor (local runtime) was started for the store


def _store_running(ctx: AppContext) -> bool:
    from appliance.runtimes import get_runtime

    try:
        seen = get_runtime(ctx).observe().get(ctx.store_kind)
    except Exception:  # the runtime cannot be asked from here (a service's own process): read as before
        return True
    return bool(seen and seen.running)


@contextlib.contextmanager
def readable(ctx: AppContext) -> Iterator[None]:
    """For ``backup``: the bundled store as it is while the stack runs; started alone for the
    block (under the state directory's lock, so no ``up`` races it) when the stack is down, as
    it is before an upgrade of a stopped stack. Other stores are left as they are."""
    if not ctx.store_is_s3 or not is_bundled(ctx) or _store_running(ctx):
        yield
        return
    from appliance.state_lock import state_lock

    with state_lock(ctx.state_dir), running_alone(ctx):
        yield

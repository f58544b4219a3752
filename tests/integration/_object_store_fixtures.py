"""SeaweedFS started the way the product starts it, for the tests that need a real S3 store.

``appliance up`` on a stack of the object store alone (the ``seaweedfs`` service and its buckets
job, rendered from stacks/services.yaml, the ``weed`` binary of the virtualenv under the state
directory's supervisord), so the tests exercise the same identities file, signing keys, wrapper
and buckets job a user's install runs. One store per test module (about 4 s to start); ``down``
in teardown. ``keys(identity)`` gives each workload class's generated key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.answers_file import load_answers
from appliance.context import AppContext
from appliance.dataconn.client import s3_client
from tests.conftest import run_cli, write_answers

ALONE = {
    "mlflow": False,
    "workbench": False,
    "monitoring": False,
    "serving": False,
    "controller": False,
    "dashboards": False,
}
"""Components off: the stack is the object store and its buckets job."""


@dataclass
class SeaweedStore:
    """A running bundled store: its answers, state directory and S3 endpoint."""

    answers: Path
    state: Path

    @property
    def ctx(self) -> AppContext:
        return AppContext.create(load_answers(self.answers), self.answers, self.state)

    @property
    def endpoint(self) -> str:
        endpoint = self.ctx.s3_endpoint
        assert endpoint
        return endpoint

    def keys(self, identity: str = "writer") -> dict[str, str]:
        """``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` of ``identity``."""
        access, secret = self.ctx.s3_credentials(identity)
        return {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}

    def client(self, identity: str = "writer") -> Any:
        keys = self.keys(identity)
        return s3_client(self.endpoint, keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])

    def cli(self, *args: str, check: bool = True) -> Any:
        return run_cli(*args, answers=self.answers, state=self.state, check=check)

    def status(self) -> dict[str, Any]:
        services: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)["services"]
        return services

    def pid(self) -> int:
        """The service's process: the wrapper (appliance/objectstore/run.py)."""
        pid = self.status()["seaweedfs"]["pid"]
        assert isinstance(pid, int), self.status()
        return pid

    def weed_pid(self) -> int:
        """The store's own process, ``weed server``, the wrapper's child."""
        wrapper = self.pid()
        children = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
        assert len(children) == 1, f"the wrapper {wrapper} has children {children}"
        return int(children[0])


def start_seaweedfs(root: Path, buckets: dict[str, str] | None = None) -> SeaweedStore:
    """``up`` a store-only stack under ``root``; ``buckets`` overrides object_store's bucket names."""
    store = {"kind": "seaweedfs"} | (buckets or {})
    root.mkdir(parents=True, exist_ok=True)
    answers = write_answers(root / "store.yaml", object_store=store, components=ALONE)
    seaweed = SeaweedStore(answers, root / "state")
    seaweed.cli("up")
    return seaweed


@contextmanager
def seaweedfs(root: Path, buckets: dict[str, str] | None = None) -> Iterator[SeaweedStore]:
    """A running store for the block; ``down`` afterwards (its data stay under ``root``)."""
    seaweed = start_seaweedfs(root, buckets)
    try:
        yield seaweed
    finally:
        seaweed.cli("down", check=False)

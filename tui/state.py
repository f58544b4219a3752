"""The wizard's choices: a plain nested dict that becomes a validated ``Answers`` on demand.

Screens edit the dict (``set``) and read it back (``get``); ``answers()`` validates through the
same pydantic model the CLI uses, so the wizard can never write a file ``appliance up`` would
refuse. The one thing not kept in the answers is an external S3 secret: the file names the
environment variable that carries it (``object_store.secret_key_env``) and the install sets
that variable for the engine, which copies it into the state directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.answers import Answers
from appliance.answers_file import render_answers

STEPS: tuple[tuple[str, str], ...] = (
    ("welcome", "Profile"),
    ("preflight", "Preflight"),
    ("components", "Components"),
    ("storage", "Storage"),
    ("gpu", "GPU"),
    ("network", "Network and security"),
    ("cluster", "This machine or a cluster"),
    ("review", "Review"),
)
STEP_NAMES = tuple(name for name, _ in STEPS)


@dataclass
class WizardState:
    """Choices so far, where the answers file goes and which state directory the stack uses."""

    initial: Answers
    answers_out: Path
    state_dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    s3_secret: str = ""
    s3_tested: tuple[str, ...] | None = None
    """The (endpoint, region, access key, secret) last tested successfully."""
    cluster_draft: dict[str, Any] | None = None
    """The cluster step's hosts and SSH settings as typed, kept while "this machine only" is
    chosen or while they are invalid; ``data["cluster"]`` holds them only once they validate."""
    cluster_chosen: bool = False
    """A cluster was chosen in the cluster step (its section may not be valid yet)."""

    def __post_init__(self) -> None:
        if not self.data:
            self.data = self.initial.model_dump(mode="json")
        self.data["state_dir"] = str(self.state_dir)
        if self.cluster_draft is None and self.data.get("cluster"):
            self.cluster_draft = dict(self.data["cluster"])
            self.cluster_chosen = True

    @property
    def is_cluster(self) -> bool:
        return bool(self.data.get("cluster"))

    def get(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            node = node[part]
        return node

    def set(self, dotted: str, value: Any) -> None:
        *parents, last = dotted.split(".")
        node = self.data
        for part in parents:
            node = node[part]
        node[last] = value

    def answers(self) -> Answers:
        """The choices as a validated Answers (raises pydantic's ValidationError when invalid)."""
        data = dict(self.data)
        store = dict(data["object_store"])
        if store["kind"] != "s3":
            store["endpoint"] = None
        data["object_store"] = store
        return Answers.model_validate(data)

    def answers_text(self) -> str:
        return render_answers(self.answers())

    def s3_key(self) -> tuple[str, ...]:
        store = self.data["object_store"]
        return (store.get("endpoint") or "", store["region"], store.get("access_key") or "", self.s3_secret)

    def export_secret(self) -> None:
        """Hand an external S3 secret to the engine the way ``appliance up`` expects it."""
        store = self.data["object_store"]
        if store["kind"] == "s3" and self.s3_secret:
            os.environ[store["secret_key_env"]] = self.s3_secret

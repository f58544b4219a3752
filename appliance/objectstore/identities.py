"""Who may do what in the bundled store: one S3 identity per workload class, keys generated.

Every workload gets the data connection with its own key (``AppContext.connection_env``), so a
leaked model-server key cannot overwrite a model and no workload holds the admin key. The table
below is the one place that decides which service is which class; SeaweedFS enforces it from
the identities file rendered here (``-s3.config``), and anonymous requests match no identity,
so they are refused.
"""

from __future__ import annotations

import json
from typing import Any

ADMIN, WRITER, READER = "admin", "writer", "reader"
IDENTITIES = (ADMIN, WRITER, READER)

SERVICE_IDENTITY: dict[str, str] = {
    "buckets": ADMIN,  # creates the buckets
    "mlflow": WRITER,  # the artifact proxy writes run artifacts and registered models
    "workbench": WRITER,
    "controller": WRITER,  # its pipeline runs train and register
    "serving": READER,  # reads models, never writes them
}
"""A service's identity; a service not listed gets the reader's (least privilege)."""


def identity_of(service: str) -> str:
    """The identity a stack service's data connection carries."""
    return SERVICE_IDENTITY.get(service, READER)


def access_key_id(identity: str) -> str:
    """The public half of an identity's key: readable in the store's logs, not a secret."""
    return f"appliance-{identity}"


def secret_name(identity: str) -> str:
    """The ``STATE/secrets`` file holding an identity's secret key (0600)."""
    return f"seaweedfs_{identity}_secret_key"


def actions(identity: str, datasets: str, models: str, mlflow: str) -> list[str]:
    """SeaweedFS actions (``Action:bucket``) an identity is granted."""
    if identity == ADMIN:
        return ["Admin", "Read", "Write", "List", "Tagging"]
    if identity == WRITER:
        buckets = list(dict.fromkeys([datasets, models, mlflow]))
        return [f"{a}:{b}" for b in buckets for a in ("Read", "Write", "List", "Tagging")]
    if identity == READER:
        return [f"Read:{models}", f"List:{models}"]
    raise ValueError(f"unknown identity {identity!r}: expected one of {', '.join(IDENTITIES)}")


def s3_config(ctx: Any, services: Any = None) -> str:
    """The identities file SeaweedFS's S3 gateway reads (``-s3.config``); rendered into the
    store's 0600 config folder, it holds the generated secret keys."""
    store = ctx.answers.object_store
    buckets = (store.datasets_bucket, store.models_bucket, store.mlflow_bucket)
    identities = [
        {
            "name": identity,
            "credentials": [
                {"accessKey": access_key_id(identity), "secretKey": ctx.secrets.get(secret_name(identity))}
            ],
            "actions": actions(identity, *buckets),
        }
        for identity in IDENTITIES
    ]
    return json.dumps({"identities": identities}, indent=2) + "\n"


def security_toml(ctx: Any, services: Any = None) -> str:
    """SeaweedFS's ``security.toml``: signing keys, so the volume servers and the filer refuse
    HTTP reads and writes that did not come through the store itself (the S3 gateway checks
    the identities above; nothing else may go around it)."""
    lines = []
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        key = ctx.secrets.get("seaweedfs_" + section.replace(".", "_") + "_key")
        lines += [f"[{section}]", f'key = "{key}"', "expires_after_seconds = 30", ""]
    return "\n".join(lines)

"""The data connection, built from the environment every service and job receives.

The stack injects the same variables into every workload (docs/interfaces.md), so a trainer, a
notebook or the controller finds its data without the CLI: ``DataConnection.from_env()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.dataconn.errors import ConnectionConfigError
from appliance.dataconn.stores import FileStore, S3Store, Store

KINDS = ("s3", "filesystem")


@dataclass
class DataConnection:
    """The datasets and models stores of one stack."""

    kind: str
    datasets: Store
    models: Store

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DataConnection:
        """Build the connection from ``env`` (default ``os.environ``); every problem is named."""
        env = os.environ if env is None else env
        kind = env.get("APPLIANCE_DATA_KIND", "")
        if kind not in KINDS:
            shown = repr(kind) if kind else "unset"
            raise ConnectionConfigError(f"APPLIANCE_DATA_KIND is {shown}, expected one of {', '.join(KINDS)}")
        datasets_name = env.get("APPLIANCE_DATASETS_BUCKET") or env.get("AWS_S3_BUCKET") or "datasets"
        models_name = env.get("APPLIANCE_MODELS_BUCKET") or "models"
        if kind == "filesystem":
            root = env.get("APPLIANCE_DATA_ROOT")
            if not root:
                raise ConnectionConfigError("APPLIANCE_DATA_KIND is filesystem but APPLIANCE_DATA_ROOT unset")
            base = Path(root).expanduser()
            return cls(kind, FileStore(base / datasets_name), FileStore(base / models_name))
        required = ("AWS_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        missing = [n for n in required if not env.get(n)]
        if missing:
            raise ConnectionConfigError(f"APPLIANCE_DATA_KIND is s3 but {', '.join(missing)} unset")
        endpoint = env["AWS_S3_ENDPOINT"]
        if not endpoint.startswith(("http://", "https://")):
            raise ConnectionConfigError(f"AWS_S3_ENDPOINT {endpoint!r} must start with http:// or https://")
        region = env.get("AWS_DEFAULT_REGION") or "us-east-1"
        key, secret = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        bucket = env.get("AWS_S3_BUCKET") or datasets_name
        return cls(
            kind,
            S3Store(bucket, endpoint, key, secret, region),
            S3Store(models_name, endpoint, key, secret, region),
        )

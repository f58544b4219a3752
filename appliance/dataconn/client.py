"""The one way the product builds an S3 client (boto3), whatever the store behind it.

SeaweedFS and MinIO answer on one host name, so buckets go in the path
(``http://host:8333/BUCKET/KEY``); AWS wants them in the host name (virtual-hosted style), and
retired path-style there. Choosing here, from the endpoint, keeps that rule in one place for the
data connection, the buckets job and backups.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse


def addressing_style(endpoint: str | None) -> str:
    """``virtual`` for AWS (no endpoint, or an ``amazonaws.com`` host), ``path`` otherwise."""
    if not endpoint:
        return "virtual"
    host = urlparse(endpoint).hostname or ""
    return "virtual" if host == "amazonaws.com" or host.endswith(".amazonaws.com") else "path"


def s3_client(
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    region: str | None = None,
    read_timeout: float = 20,
) -> Any:
    """A boto3 S3 client with short connect timeouts, so an unreachable store fails in seconds."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=3,
        read_timeout=read_timeout,
        # Standard mode retries throttling and 5xx with backoff: a store that was just restarted
        # answers InternalError for the second or so its gateway waits for the volume locations.
        retries={"max_attempts": 4, "mode": "standard"},
        s3={"addressing_style": addressing_style(endpoint)},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region or "us-east-1",
        config=config,
    )


def client_from_env(env: Any) -> Any:
    """The client of a data-connection environment (``AWS_S3_ENDPOINT``, keys, region)."""
    return s3_client(
        env.get("AWS_S3_ENDPOINT") or None,
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
        env.get("AWS_DEFAULT_REGION"),
    )

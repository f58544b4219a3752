"""Built-in ``ingest`` step: pick the newest object under ``datasets/<name>/`` and write its key.

The newest object under a dataset's prefix is that dataset's current version (docs/interfaces.md),
so a retrain run pins the version it trains on here, at its start, and every later step reads the
same key from the workdir even if a new file lands mid-run. It reads the data connection from the
environment (``APPLIANCE_DATA_KIND`` and friends) with a small lister of its own, boto3 for S3,
plain files otherwise, so it needs neither the trainer nor torch.

Run as ``python -m appliance.pipelines.ingest --dataset NAME --workdir DIR``; it writes
``dataset_key.txt`` (``NAME/FILE``) and ``dataset_uri.txt`` (``s3://BUCKET/KEY`` or a path).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

SUFFIXES = (".csv", ".parquet")


class IngestError(Exception):
    """Nothing to ingest, or the data connection is incomplete; the message says which."""


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise IngestError(f"{name} is not set: the step needs the stack's data connection in its environment")
    return value


def newest_filesystem(env: Mapping[str, str], dataset: str) -> tuple[str, str]:
    """(key, path) of the newest dataset file under ``APPLIANCE_DATA_ROOT/<bucket>/<dataset>/``."""
    root = Path(_require(env, "APPLIANCE_DATA_ROOT")) / env.get("APPLIANCE_DATASETS_BUCKET", "datasets")
    folder = root / dataset
    files = [p for p in folder.glob("*") if p.is_file() and p.suffix in SUFFIXES] if folder.is_dir() else []
    if not files:
        raise IngestError(f"no .csv or .parquet file under {folder}: upload one with `appliance data put`")
    newest = max(files, key=lambda p: (p.stat().st_mtime, p.name))
    return f"{dataset}/{newest.name}", str(newest)


def newest_s3(env: Mapping[str, str], dataset: str) -> tuple[str, str]:
    """(key, uri) of the newest dataset object under ``s3://<bucket>/<dataset>/``."""
    import boto3

    bucket = env.get("AWS_S3_BUCKET") or _require(env, "APPLIANCE_DATASETS_BUCKET")
    client = boto3.client(
        "s3",
        endpoint_url=env.get("AWS_S3_ENDPOINT") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    best: tuple[object, str] | None = None
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{dataset}/"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith(SUFFIXES) and (best is None or (obj["LastModified"], key) > best):
                best = (obj["LastModified"], key)
    if best is None:
        raise IngestError(f"no .csv or .parquet object under s3://{bucket}/{dataset}/: upload one first")
    return best[1], f"s3://{bucket}/{best[1]}"


def ingest(env: Mapping[str, str], dataset: str, workdir: Path) -> str:
    """Write the newest version's key and URI into ``workdir``; return the key."""
    if not dataset or "/" in dataset or dataset.startswith("."):
        raise IngestError(f"dataset name {dataset!r} must be a plain folder name under datasets/")
    kind = env.get("APPLIANCE_DATA_KIND", "filesystem")
    if kind not in ("s3", "filesystem"):
        raise IngestError(f"APPLIANCE_DATA_KIND is {kind!r}: expected 's3' or 'filesystem'")
    key, uri = newest_s3(env, dataset) if kind == "s3" else newest_filesystem(env, dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "dataset_key.txt").write_text(key + "\n")
    (workdir / "dataset_uri.txt").write_text(uri + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.pipelines.ingest", description=__doc__)
    parser.add_argument("--dataset", required=True, help="dataset name (folder under datasets/)")
    parser.add_argument("--workdir", required=True, type=Path, help="the pipeline run's workdir")
    args = parser.parse_args(argv)
    try:
        key = ingest(os.environ, args.dataset, args.workdir)
    except IngestError as err:
        print(f"ingest failed: {err}", file=sys.stderr)
        return 1
    print(f"ingested {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

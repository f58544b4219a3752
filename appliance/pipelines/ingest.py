"""Built-in ``ingest`` step: pick the newest object under ``datasets/<name>/`` and write its key.

The newest object under a dataset's prefix is that dataset's current version (docs/interfaces.md),
so a retrain run pins the version it trains on here, at its start, and every later step reads the
same key from the workdir (``--dataset-key``) even if a new file lands mid-run. The lookup is the
data connection's own (``appliance.dataconn.resolve``), so "newest" means the same thing here as
in the trainer and ``appliance data ls``; no torch or pandas is imported.

Run as ``python -m appliance.pipelines.ingest --dataset NAME --workdir DIR``; it writes
``dataset_key.txt`` (``NAME/FILE``) and ``dataset_uri.txt`` (``s3://BUCKET/KEY`` or a path).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from appliance.dataconn import DataConnection, resolve
from appliance.errors import ApplianceError


def ingest(env: Mapping[str, str], dataset: str, workdir: Path) -> str:
    """Write the newest version's key and URI into ``workdir``; return the key."""
    if not dataset or "/" in dataset or dataset.startswith("."):
        raise ApplianceError(
            f"dataset name {dataset!r} must be a plain folder name under datasets/",
            fix="pass the name `appliance data ls` shows, e.g. --dataset breast_cancer",
        )
    conn = DataConnection.from_env(env)
    found = resolve(conn, dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "dataset_key.txt").write_text(found.key + "\n")
    (workdir / "dataset_uri.txt").write_text(conn.datasets.uri(found.key) + "\n")
    return found.key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.pipelines.ingest", description=__doc__)
    parser.add_argument("--dataset", required=True, help="dataset name (folder under datasets/)")
    parser.add_argument("--workdir", required=True, type=Path, help="the pipeline run's workdir")
    args = parser.parse_args(argv)
    try:
        key = ingest(os.environ, args.dataset, args.workdir)
    except ApplianceError as err:
        print(f"ingest failed: {err}", file=sys.stderr)
        return 1
    print(f"ingested {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

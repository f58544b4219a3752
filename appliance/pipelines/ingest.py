"""Built-in ``ingest`` step: pick the newest object under ``datasets/<name>/`` and write its key.

The newest object under a dataset's prefix is that dataset's current version (docs/interfaces.md),
so a retrain run pins the version it trains on here, at its start, and every later step reads the
same key from the workdir (``--dataset-key``) even if a new file lands mid-run. The lookup is the
data connection's own (``appliance.dataconn.resolve``), so "newest" means the same thing here as
in the trainer and ``appliance data ls``; no torch or pandas is imported.

With ``--refresh true`` (or ``auto`` and a dataset that ``appliance data import`` took from a
database) it first re-runs the dataset's saved query as a new version
(``appliance.dataconn.dbimport.refresh``, pandas imported then only), so a scheduled retrain
learns from the table as it is now, yet still from a fixed, hashed snapshot.

Run as ``python -m appliance.pipelines.ingest --dataset NAME --workdir DIR [--refresh auto]
[--state-dir STATE]``; it writes ``dataset_key.txt`` (``NAME/FILE``) and ``dataset_uri.txt``
(``s3://BUCKET/KEY`` or a path).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from appliance.dataconn import DataConnection, resolve
from appliance.errors import ApplianceError
from appliance.pipelines.model import REFRESH_CHOICES


def ingest(
    env: Mapping[str, str], dataset: str, workdir: Path, refresh: str = "false", state_dir: Path | None = None
) -> str:
    """Re-run the dataset's saved query when ``refresh`` asks, then write the newest version's
    key and URI into ``workdir``; return the key."""
    if not dataset or "/" in dataset or dataset.startswith("."):
        raise ApplianceError(
            f"dataset name {dataset!r} must be a plain folder name under datasets/",
            fix="pass the name `appliance data ls` shows, e.g. --dataset breast_cancer",
        )
    conn = DataConnection.from_env(env)
    key = None
    if refresh != "false":
        from appliance.dataconn import dbimport

        if refresh == "true" or dbimport.load_saved(conn, dataset) is not None:
            state = state_dir or Path(env.get("APPLIANCE_STATE_DIR") or ".")
            result = dbimport.refresh(conn, dataset, state)
            state_word = "new version" if result.written else "same as the newest version"
            print(f"re-ran the saved query: {result.rows} rows, {state_word} ({result.key})")
            key = result.key  # the snapshot just taken, even if another file lands right after
    key = key or resolve(conn, dataset).key
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "dataset_key.txt").write_text(key + "\n")
    (workdir / "dataset_uri.txt").write_text(conn.datasets.uri(key) + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.pipelines.ingest", description=__doc__)
    parser.add_argument("--dataset", required=True, help="dataset name (folder under datasets/)")
    parser.add_argument("--workdir", required=True, type=Path, help="the pipeline run's workdir")
    parser.add_argument(
        "--refresh",
        choices=REFRESH_CHOICES,
        default="false",
        help="re-run the dataset's saved database query first (auto: when it has one)",
    )
    parser.add_argument("--state-dir", type=Path, help="where the database password is (STATE/secrets)")
    args = parser.parse_args(argv)
    try:
        key = ingest(os.environ, args.dataset, args.workdir, args.refresh, args.state_dir)
    except ApplianceError as err:
        print(f"ingest failed: {err}", file=sys.stderr)
        return 1
    print(f"ingested {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

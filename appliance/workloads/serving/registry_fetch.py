"""``python -m appliance.workloads.serving.registry_fetch MODEL VERSION DEST``: download one
registered model version with MLflow's client, print the folder it wrote, exit.

The model server runs this as a child process (``registry_client.download``), so that MLflow's
imports (about 140 MB resident) never stay in the server. The environment is the server's
(``MLFLOW_TRACKING_URI`` and the account, CA and request settings MLflow reads). A failure is one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not all(argv):
        print("usage: registry_fetch MODEL VERSION DEST", file=sys.stderr)
        return 2
    model, version, dest = argv
    try:
        import mlflow.artifacts

        folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/{version}", dst_path=dest)
    except Exception as err:  # the server reports it: one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"download failed: {first}", file=sys.stderr)
        return 1
    print(folder, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The bundled object store against the folder store: SeaweedFS's idle memory and start time, and
the time of ``appliance data seed`` and of a training run on each, with their ratios.

Brings up, with the real CLI on free ports in temporary state directories (local runtime), a
stack of MLflow and the object store alone, once with ``object_store.kind: seaweedfs`` and once
with ``filesystem``; on each seeds breast_cancer and trains it (``--epochs``), timing both, then
takes the stack down and purges it. SeaweedFS's start time is ``up`` of a store-only stack (the
store and its buckets job) on an empty state directory and again on its data; its memory is the
PSS of its process tree (``appliance status --json``) and the RSS of ``weed`` after ``--idle``
seconds. Prints a markdown table. A benchmark (minutes), not a test.

    .venv/bin/python benchmarks/object_store.py [--idle SECONDS] [--epochs N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.conftest's free ports (SeaweedFS needs each port + 10000 free)
APPLIANCE = str(Path(sys.executable).parent / "appliance")
OFF = {"workbench": False, "monitoring": False, "serving": False, "controller": False, "dashboards": False}


def cli(answers: Path, state: Path, *args: str) -> float:
    """Run the CLI; its wall time in seconds."""
    cmd = [APPLIANCE, "--answers", str(answers), "--state-dir", str(state), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "MLFLOW_", "AWS_"))}
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return time.monotonic() - started


def answers(path: Path, kind: str, components: dict[str, bool]) -> Path:
    from tests.conftest import free_ports

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"ports": free_ports(), "object_store": {"kind": kind}, "components": components}
    path.write_text(yaml.safe_dump(doc | {"health_timeout_seconds": 600}))
    return path


def store_figures(root: Path, idle: float) -> dict[str, float]:
    """Start times (empty, then with data) and idle memory of a store-only stack."""
    ans = answers(root / "store.yaml", "seaweedfs", OFF | {"mlflow": False})
    state = root / "store-state"
    first = cli(ans, state, "up")
    time.sleep(idle)
    status = json.loads(
        subprocess.run(
            [APPLIANCE, "--answers", str(ans), "--state-dir", str(state), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["services"]["seaweedfs"]
    pid = status["pid"]
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    rss_kib = max(_rss_kib(int(p)) for p in [pid, *children])
    cli(ans, state, "down")
    again = cli(ans, state, "up")
    cli(ans, state, "down", "--purge", "--yes")
    return {
        "up_empty_s": first,
        "up_with_data_s": again,
        "pss_mib": status["memory_bytes"] / 2**20,
        "weed_rss_mib": rss_kib / 1024,
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def lifecycle(root: Path, kind: str, epochs: int) -> dict[str, float]:
    """Seed and train breast_cancer on a stack of MLflow and the ``kind`` store."""
    ans = answers(root / f"{kind}.yaml", kind, OFF)
    state = root / f"{kind}-state"
    cli(ans, state, "up")
    try:
        seed = cli(ans, state, "data", "seed", "--dataset", "breast_cancer")
        train = cli(ans, state, "train", "--dataset", "breast_cancer", "--epochs", str(epochs))
    finally:
        cli(ans, state, "down", "--purge", "--yes")
    return {"seed_s": seed, "train_s": train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        root = Path(tmp)
        store = store_figures(root, args.idle)
        runs: dict[str, list[dict[str, float]]] = {"seaweedfs": [], "filesystem": []}
        for round_ in range(args.rounds):
            for kind in ("seaweedfs", "filesystem"):  # alternated, so load drifts hit both
                runs[kind].append(lifecycle(root / f"r{round_}", kind, args.epochs))
    med = {
        k: {m: statistics.median(r[m] for r in rs) for m in ("seed_s", "train_s")} for k, rs in runs.items()
    }
    print("| figure | SeaweedFS | folder store | ratio |")
    print("| --- | --- | --- | --- |")
    for metric, label in (
        ("seed_s", "`data seed --dataset breast_cancer` (s)"),
        ("train_s", f"`train --dataset breast_cancer --epochs {args.epochs}` (s)"),
    ):
        a, b = med["seaweedfs"][metric], med["filesystem"][metric]
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"| store `up` on an empty state dir (s) | {store['up_empty_s']:.1f} | - | - |")
    print(f"| store `up` on its data (s) | {store['up_with_data_s']:.1f} | - | - |")
    print(
        f"| idle memory after {args.idle:.0f} s: PSS of its tree / RSS of weed (MiB) "
        f"| {store['pss_mib']:.0f} / {store['weed_rss_mib']:.0f} | - | - |"
    )


if __name__ == "__main__":
    main()

"""The idle footprint of the lab and edge stacks: PSS per service and in total, against the aims.

Brings each stack up with the real CLI on free ports in a temporary state directory (the local
runtime, the profile's default components), waits until every service is healthy and the stack
has been idle for a while, reads ``appliance status --json`` (PSS of each service's process tree,
appliance/footprint.py) a few times and keeps the median, then takes the stack down and purges
it. Prints a markdown table per stack, and a warning for each program of the stack that also
runs outside it (``shared_executables``: its pages' PSS is split, its figure too low). Not a
timed test: a benchmark (minutes).

    .venv/bin/python benchmarks/footprint.py [--idle SECONDS] [--profiles lab,edge] [--train]

``--train`` seeds the demo dataset and trains the first champion on the lab stack first, as
``make up`` does, so that the model server holds a loaded model.
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
from typing import Any

import yaml

from appliance.footprint import process_tree, pss_bytes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' model builder
APPLIANCE = str(Path(sys.executable).parent / "appliance")
AIMS_MIB = {"lab": 1024, "edge": 300}


def cli(answers: Path, state: Path, *args: str, timeout: float = 1200) -> str:
    cmd = [APPLIANCE, "--answers", str(answers), "--state-dir", str(state), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "MLFLOW_"))}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        out = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{out}")
    return done.stdout


def answers_for(profile: str, path: Path) -> Path:
    from tests.conftest import free_ports  # paired with SeaweedFS's gRPC ports, all free

    ports = free_ports()
    doc: dict[str, Any] = {"profile": profile, "ports": ports, "health_timeout_seconds": 600}
    if profile == "edge":  # no registry there: serve a model file (the tests' MLP)
        from tests.integration._serving_fixtures import write_mlp

        doc["serving"] = {"model": str(write_mlp(path.parent / "model"))}
    path.write_text(yaml.safe_dump(doc))
    return path


def _supervisors(state: Path) -> list[int]:
    """The supervisord of this state directory (its config path is on its command line)."""
    needle = str(state / "supervisor").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def shared_executables(stack: set[int]) -> dict[str, list[int]]:
    """Programs of the stack that processes outside it run too, and their pids. PSS splits a
    program's pages between every process mapping them, so such a neighbour (another stack's
    ``weed``, a test's Prometheus) makes the stack's figures too low: one run of 2026-12-01 gave
    SeaweedFS half its memory that way. The Python interpreter is left out: this script's own
    ``appliance status`` runs it while it measures (a few MiB of shared text)."""
    ours = {exe for pid in stack if (exe := _exe(pid)) and "python" not in Path(exe).name}
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in stack:
            exe = _exe(int(entry.name))
            if exe in ours:
                found.setdefault(Path(exe).name, []).append(int(entry.name))
    return found


def measure(profile: str, idle: float, samples: int, train: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"footprint-{profile}-") as tmp:
        answers, state = answers_for(profile, Path(tmp) / "appliance.yaml"), Path(tmp) / "state"
        started = time.monotonic()
        try:
            cli(answers, state, "up", "--quiet")
            up_s = time.monotonic() - started
            if train and profile == "lab":
                cli(answers, state, "data", "seed", "--dataset", "breast_cancer")
                cli(answers, state, "train", "--dataset", "breast_cancer")
            time.sleep(idle)
            stack = {pid for sup in _supervisors(state) for pid in process_tree(sup)}
            shared = shared_executables(stack)
            runs = []
            for _ in range(samples):
                run = json.loads(cli(answers, state, "status", "--json"))
                # the stack's own supervisor (local runtime) is not a service but is part of the stack
                supervisor = [pss_bytes(pid) for pid in _supervisors(state)]
                run["services"]["(supervisord)"] = {"memory_bytes": sum(p or 0 for p in supervisor)}
                runs.append(run)
                time.sleep(2)
        finally:
            cli(answers, state, "down", "--purge", "--yes")
    services: dict[str, list[int]] = {}
    for run in runs:
        for name, s in run["services"].items():
            if s.get("memory_bytes"):
                services.setdefault(name, []).append(s["memory_bytes"])
    per = {name: int(statistics.median(v)) for name, v in services.items()}
    return {
        "profile": profile,
        "up_seconds": round(up_s),
        "services": per,
        "total": sum(per.values()),
        "shared": shared,
    }


def table(result: dict[str, Any]) -> str:
    mib = 1 << 20
    aim = AIMS_MIB[result["profile"]]
    lines = [
        f"**{result['profile']}** (up in {result['up_seconds']} s; idle, median of the samples)",
        "",
        "| service | PSS (MiB) |",
        "|---|---:|",
    ]
    for name, value in sorted(result["services"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {value / mib:.0f} |")
    total = result["total"] / mib
    verdict = "met" if total <= aim else f"missed by {total - aim:.0f} MiB"
    lines.append(f"| **total** | **{total:.0f}** (aim <= {aim}: {verdict}) |")
    for name, pids in sorted(result["shared"].items()):
        shown = ", ".join(map(str, pids))
        lines.append(f"\nWARNING: {name} also runs outside the stack (pid {shown}): its figure is too low")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=30, help="seconds to wait after up before measuring")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--profiles", default="lab,edge")
    parser.add_argument("--train", action="store_true", help="train the first champion on the lab stack")
    args = parser.parse_args()
    for profile in args.profiles.split(","):
        result = measure(profile, args.idle, args.samples, args.train)
        print(table(result), flush=True)
        print(flush=True)
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

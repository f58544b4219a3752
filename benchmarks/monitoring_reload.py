"""What tuning an alerting answer costs the monitoring: Prometheus and Alertmanager reloaded in
place (SIGHUP, ``appliance/runtimes/reloads.py``) against recreated, as every change of their
files did before.

Two monitoring stacks (Prometheus, Alertmanager, node exporter) brought up by the real engine on
the local runtime, each in its own state folder and ports: one from ``stacks/services.yaml``, one
from a copy of it without the two ``reload`` declarations (so a change of their files recreates
them). Each then has its drift threshold and Alertmanager's group wait changed ``--changes`` times
through ``Engine.up``, while one thread per server asks it in a closed loop (Prometheus an instant
query, Alertmanager its alert list, both with the stack's credential; any HTTP answer counts, a
refused or reset connection or a timeout fails). Reported per stack: the time each ``up`` took,
the requests that failed and the longest time without an answer, per server. Prometheus's
restart here replays an almost empty TSDB: on a store of weeks of data its start, and so the
outage, take longer. Numbers compare only within one run.

    .venv/bin/python benchmarks/monitoring_reload.py
    .venv/bin/python benchmarks/monitoring_reload.py --changes 5
"""

from __future__ import annotations

import argparse
import base64
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest's free ports
from availability import Prober

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.stack import STACKS_DIR
from tests.conftest import free_ports

MONITORING_ONLY = {
    "mlflow": False,
    "workbench": False,
    "serving": False,
    "controller": False,
    "dashboards": False,
}
ASKS = {"prometheus": "/api/v1/query?query=up", "alertmanager": "/api/v2/alerts"}


@dataclass
class Result:
    verbs: set[str] = field(default_factory=set)
    """What the plans did to the two servers."""
    up_s: list[float] = field(default_factory=list)
    servers: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Each server's prober summary."""


def engine(root: Path, stack_file: Path | None, ports: dict[str, int], psi: float, wait: str) -> Engine:
    answers = {
        "ports": ports,
        "object_store": {"kind": "filesystem"},
        "components": MONITORING_ONLY,
        "monitoring": {"drift_psi_threshold": psi, "alert_group_wait": wait},
        "health_timeout_seconds": 120,
    }
    return Engine(
        AppContext.create(Answers.model_validate(answers), None, root / "state"), stack_file=stack_file
    )


def login(root: Path, service: str) -> dict[str, str]:
    """The stack's basic-auth header for ``service`` (user ``appliance``, its generated password)."""
    password = (root / "state" / "secrets" / f"{service}_web_password").read_text().strip()
    return {"Authorization": "Basic " + base64.b64encode(f"appliance:{password}".encode()).decode()}


def measure(root: Path, stack_file: Path | None, changes: int) -> Result:
    ports = free_ports()
    first = engine(root, stack_file, ports, 0.2, "30s")
    first.up()
    probers = {
        name: Prober(str(first.desired[name].url) + path, login(root, name)) for name, path in ASKS.items()
    }
    for prober in probers.values():
        prober.start()
    time.sleep(2)
    result, began = Result(), time.monotonic()
    try:
        for i in range(changes):
            tuned = engine(
                root, stack_file, ports, 0.35 if i % 2 == 0 else 0.2, "7s" if i % 2 == 0 else "30s"
            )
            result.verbs |= {a.verb for a in tuned.plan().actions}
            started = time.monotonic()
            tuned.up()
            result.up_s.append(time.monotonic() - started)
            time.sleep(2)
    finally:
        for prober in probers.values():
            prober.stopping.set()
            prober.join()
        first.down()
    result.servers = {name: prober.since(began) for name, prober in probers.items()}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=4, help="answer changes applied to each stack")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="monitoring-reload-"))
    try:
        before = yaml.safe_load((STACKS_DIR / "services.yaml").read_text())
        for name in ASKS:
            del before["services"][name]["reload"]
        recreating = root / "recreate.yaml"
        recreating.write_text(yaml.safe_dump(before, sort_keys=False))
        (root / "reload").mkdir()
        (root / "recreate").mkdir()
        results = {
            "reload (SIGHUP)": measure(root / "reload", None, args.changes),
            "recreate": measure(root / "recreate", recreating, args.changes),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.changes} changes of the drift threshold and Alertmanager's group wait per stack\n")
    print("| change | plan | up, median (s) | server | answered | failed | longest without an answer (s) |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: |")
    for label, result in results.items():
        up_s, verbs = statistics.median(result.up_s), ", ".join(sorted(result.verbs))
        for name, (answered, failed, gap) in result.servers.items():
            print(f"| {label} | {verbs} | {up_s:.2f} | {name} | {answered:,} | {failed} | {gap:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The appliance's Grafana dashboards: serving, drift, pipelines, host.

The JSON committed under ``stacks/monitoring/grafana/dashboards/`` is this module's output with
the default thresholds (a test fails when it is stale; refresh it with
``python -m appliance.monitoring.dashboards stacks/monitoring/grafana/dashboards``). The engine
writes the same dashboards with the answers file's thresholds into the state directory, so the
PSI and latency lines drawn on the panels are the ones the alerts use.

Queries use only the metric names of ``docs/interfaces.md``, node exporter and DCGM exporter
(checked by tests against :mod:`appliance.monitoring.catalog`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from appliance.monitoring.dashboards_model import drift, serving
from appliance.monitoring.dashboards_ops import host, pipelines


def build_dashboards(
    psi_threshold: float = 0.2, latency_slo: float = 0.05, error_ratio: float = 0.05
) -> dict[str, dict[str, Any]]:
    """File name to dashboard JSON for every dashboard, with the given thresholds drawn in."""
    return {
        "serving.json": serving(latency_slo, error_ratio),
        "drift.json": drift(psi_threshold),
        "pipelines.json": pipelines(),
        "host.json": host(),
    }


def dump(dashboard_json: dict[str, Any]) -> str:
    """The stable text form of a dashboard (what gets written and compared)."""
    return json.dumps(dashboard_json, indent=2, sort_keys=False) + "\n"


def write_dashboards(
    directory: Path, psi_threshold: float = 0.2, latency_slo: float = 0.05, error_ratio: float = 0.05
) -> list[Path]:
    """Write every dashboard into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in build_dashboards(psi_threshold, latency_slo, error_ratio).items():
        path = directory / name
        path.write_text(dump(board))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the appliance's Grafana dashboards.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--psi-threshold", type=float, default=0.2)
    parser.add_argument("--latency-slo", type=float, default=0.05)
    parser.add_argument("--error-ratio", type=float, default=0.05)
    args = parser.parse_args(argv)
    for path in write_dashboards(args.directory, args.psi_threshold, args.latency_slo, args.error_ratio):
        print(path)


if __name__ == "__main__":
    main()

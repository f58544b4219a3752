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

from appliance.monitoring.panels import UP_DOWN, Panel, Query, Row, dashboard, model_variable

M = 'model=~"$model"'
RATE = "$__rate_interval"


def _quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{M}}}[{RATE}])))"


def serving(latency_slo: float, error_ratio: float) -> dict[str, Any]:
    """Throughput, latency, errors, batching and the served model version."""
    requests = "appliance_inference_requests_total"
    latency = "appliance_inference_request_duration_seconds"
    overview = [
        Panel(
            "Served model version",
            [
                Query(
                    f"max by (model, version, source) (appliance_model_info{{{M}}})",
                    "{{model}} v{{version}}",
                    True,
                )
            ],
            kind="stat",
            width=8,
            height=5,
            description="The model version each server reports serving (appliance_model_info).",
            options={"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "none"},
        ),
        Panel(
            "Requests per second",
            [Query(f"sum(rate({requests}{{{M}}}[{RATE}]))", "requests/s", True)],
            unit="reqps",
            kind="stat",
            width=8,
            height=5,
        ),
        Panel(
            "p99 latency",
            [Query(_quantile(0.99, latency), "p99", True)],
            unit="s",
            kind="stat",
            width=8,
            height=5,
            threshold=latency_slo,
            description="Red above the latency objective (monitoring.latency_p99_slo_seconds).",
        ),
    ]
    traffic = [
        Panel(
            "Throughput by outcome",
            [Query(f"sum by (outcome) (rate({requests}{{{M}}}[{RATE}]))", "{{outcome}}")],
            unit="reqps",
        ),
        Panel(
            "Throughput by protocol",
            [Query(f"sum by (protocol) (rate({requests}{{{M}}}[{RATE}]))", "{{protocol}}")],
            unit="reqps",
        ),
        Panel(
            "Request latency",
            [Query(_quantile(q, latency), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
            unit="s",
            threshold=latency_slo,
            description="End-to-end request latency; the dashed line is the p99 objective.",
        ),
        Panel(
            "Server error ratio",
            [
                Query(
                    f'sum(rate({requests}{{{M}, outcome="server_error"}}[{RATE}]))'
                    f" / sum(rate({requests}{{{M}}}[{RATE}]))",
                    "server errors",
                )
            ],
            unit="percentunit",
            threshold=error_ratio,
            description="Share of requests ending in a server error; the dashed line is the alert threshold.",
        ),
    ]
    batching = [
        Panel(
            "Queue and compute time (p99)",
            [
                Query(_quantile(0.99, "appliance_inference_queue_duration_seconds"), "queue p99"),
                Query(_quantile(0.99, "appliance_inference_compute_duration_seconds"), "compute p99"),
            ],
            unit="s",
            description="Time waiting for a batch to form versus running the model.",
        ),
        Panel(
            "Batch size",
            [
                Query(
                    f"sum(rate(appliance_inference_batch_size_sum{{{M}}}[{RATE}]))"
                    f" / sum(rate(appliance_inference_batch_size_count{{{M}}}[{RATE}]))",
                    "mean",
                ),
                Query(_quantile(0.95, "appliance_inference_batch_size"), "p95"),
            ],
        ),
        Panel(
            "In-flight requests",
            [Query("sum by (protocol) (appliance_inference_in_flight)", "{{protocol}}")],
            width=24,
        ),
    ]
    rows = [Row("Overview", overview), Row("Traffic", traffic), Row("Batching", batching)]
    return dashboard("appliance-serving", "Appliance / Serving", rows, [model_variable()])


def drift(psi_threshold: float) -> dict[str, Any]:
    """Feature and prediction PSI against the alert threshold, and the window they come from."""
    rows = [
        Row(
            "Drift",
            [
                Panel(
                    "Feature PSI",
                    [
                        Query(
                            f"max by (model, feature) (appliance_feature_psi{{{M}}})",
                            "{{model}} / {{feature}}",
                        )
                    ],
                    threshold=psi_threshold,
                    width=24,
                    height=10,
                    description="Population stability index per feature over the live window; the dashed "
                    "line is the FeatureDrift threshold (monitoring.drift_psi_threshold).",
                ),
                Panel(
                    "Most drifted features now",
                    [
                        Query(
                            f"topk(10, max by (feature) (appliance_feature_psi{{{M}}}))", "{{feature}}", True
                        )
                    ],
                    kind="bargauge",
                    threshold=psi_threshold,
                    options={"orientation": "horizontal", "displayMode": "gradient"},
                ),
                Panel(
                    "Prediction PSI",
                    [Query(f"max by (model) (appliance_prediction_psi{{{M}}})", "{{model}}")],
                    threshold=psi_threshold,
                    description="PSI of the model's outputs; dashed: the PredictionDrift threshold.",
                ),
            ],
        ),
        Row(
            "Window",
            [
                Panel(
                    "Rows in the drift window",
                    [Query(f"max by (model) (appliance_drift_window_rows{{{M}}})", "{{model}}")],
                    width=24,
                    description="Live rows the PSI is computed from; PSI over few rows is noisy.",
                )
            ],
        ),
    ]
    return dashboard("appliance-drift", "Appliance / Drift", rows, [model_variable()])


def pipelines() -> dict[str, Any]:
    """Retraining runs, their triggers and outcomes, and promotions (controller metrics)."""
    runs = "appliance_pipeline_runs_total"
    rows = [
        Row(
            "Runs",
            [
                Panel(
                    "Runs in range",
                    [Query(f"sum by (outcome) (increase({runs}[$__range]))", "{{outcome}}", True)],
                    kind="stat",
                    width=8,
                    height=5,
                ),
                Panel(
                    "Promotions in range",
                    [
                        Query(
                            "sum by (model) (increase(appliance_model_promotions_total[$__range]))",
                            "{{model}}",
                            True,
                        )
                    ],
                    kind="stat",
                    width=8,
                    height=5,
                ),
                Panel(
                    "Controller up",
                    [Query('up{job="controller"}', "{{instance}}", True)],
                    kind="stat",
                    width=8,
                    height=5,
                    threshold=1,
                    bad_below=True,
                    mappings=UP_DOWN,
                    options={"colorMode": "background"},
                ),
                Panel(
                    "Runs per hour",
                    [Query(f"sum by (pipeline, outcome) (increase({runs}[1h]))", "{{pipeline}} {{outcome}}")],
                    custom={"drawStyle": "bars", "fillOpacity": 60},
                ),
                Panel(
                    "Retrain triggers",
                    [
                        Query(
                            "sum by (trigger) (increase(appliance_retrain_triggers_total[1h]))",
                            "{{trigger}}",
                        )
                    ],
                    custom={"drawStyle": "bars", "fillOpacity": 60},
                    description="What started each retraining: cron schedule, drift alert or manual.",
                ),
                Panel(
                    "Last run duration",
                    [Query("max by (pipeline) (appliance_pipeline_last_duration_seconds)", "{{pipeline}}")],
                    unit="s",
                ),
                Panel(
                    "Running pipelines",
                    [Query("max by (pipeline) (appliance_pipeline_running)", "{{pipeline}}")],
                    custom={"lineInterpolation": "stepAfter"},
                ),
            ],
        )
    ]
    return dashboard("appliance-pipelines", "Appliance / Training and pipelines", rows, [])


def host() -> dict[str, Any]:
    """CPU, memory, disk and network from node exporter, GPU from the DCGM exporter."""
    disk = 'fstype!~"tmpfs|overlay|squashfs|ramfs"'
    nic = 'device!="lo"'
    gpu_help = "Needs NVIDIA's DCGM exporter scraped by Prometheus; empty on hosts without a GPU."
    rows = [
        Row(
            "Host",
            [
                Panel(
                    "CPU busy",
                    [
                        Query(
                            f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}]))',
                            "{{instance}}",
                        )
                    ],
                    unit="percentunit",
                ),
                Panel("Load (1 min)", [Query("node_load1", "{{instance}}")]),
                Panel(
                    "Memory used",
                    [
                        Query(
                            "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{instance}}"
                        )
                    ],
                    unit="percentunit",
                ),
                Panel(
                    "Disk used",
                    [
                        Query(
                            f"1 - node_filesystem_avail_bytes{{{disk}}}"
                            f" / node_filesystem_size_bytes{{{disk}}}",
                            "{{instance}} {{mountpoint}}",
                        )
                    ],
                    unit="percentunit",
                ),
                Panel(
                    "Network",
                    [
                        Query(
                            f"sum by (instance) (rate(node_network_receive_bytes_total{{{nic}}}[{RATE}]))",
                            "{{instance}} in",
                        ),
                        Query(
                            f"-sum by (instance) (rate(node_network_transmit_bytes_total{{{nic}}}[{RATE}]))",
                            "{{instance}} out",
                        ),
                    ],
                    unit="Bps",
                ),
                Panel(
                    "Targets up",
                    [Query("up", "{{job}} {{instance}}", True)],
                    kind="stat",
                    threshold=1,
                    bad_below=True,
                    mappings=UP_DOWN,
                    options={"colorMode": "background", "textMode": "value_and_name"},
                    description="Every scrape target; red means Prometheus cannot reach it.",
                ),
            ],
        ),
        Row(
            "GPU",
            [
                Panel(
                    "GPU utilisation",
                    [Query("DCGM_FI_DEV_GPU_UTIL", "{{Hostname}} GPU {{gpu}}")],
                    unit="percent",
                    description=gpu_help,
                ),
                Panel(
                    "GPU memory used",
                    [
                        Query(
                            "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
                            "{{Hostname}} GPU {{gpu}}",
                        )
                    ],
                    unit="percentunit",
                    description=gpu_help,
                ),
                Panel(
                    "GPU temperature",
                    [Query("DCGM_FI_DEV_GPU_TEMP", "{{Hostname}} GPU {{gpu}}")],
                    unit="celsius",
                    description=gpu_help,
                ),
                Panel(
                    "GPU power",
                    [Query("DCGM_FI_DEV_POWER_USAGE", "{{Hostname}} GPU {{gpu}}")],
                    unit="watt",
                    description=gpu_help,
                ),
            ],
            collapsed=True,
        ),
    ]
    return dashboard("appliance-host", "Appliance / Host", rows, [])


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

"""Dashboards about the platform: retraining pipelines (controller metrics), the host and the
bundled object store (SeaweedFS's capacity and S3 request rates).

The host dashboard's GPU row reads NVIDIA DCGM exporter metrics; it sits collapsed and stays
empty on hosts without a GPU.
"""

from __future__ import annotations

from typing import Any

from appliance.monitoring.panels import UP_DOWN, Panel, Query, Row, dashboard

RATE = "$__rate_interval"


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
                    "Refused drift alerts",
                    [
                        Query(
                            "sum by (model) (increase(appliance_retrain_refusals_total[1h]))",
                            "{{model}}",
                        )
                    ],
                    custom={"drawStyle": "bars", "fillOpacity": 60},
                    description="Drift alerts for a model with no dataset binding (models[].dataset in "
                    "the answers): nothing was retrained.",
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
        ),
        Row(
            "Backups",
            [
                Panel(
                    "Since the last good backup",
                    [
                        Query(
                            "time() - max(appliance_backup_last_success_timestamp_seconds)",
                            "age",
                            True,
                        ),
                        Query("max(appliance_backup_stale_after_seconds)", "alert after", True),
                    ],
                    kind="stat",
                    unit="s",
                    width=8,
                    height=5,
                    description="Scheduled backups only (backup.schedule in the answers); "
                    "BackupTooOld fires once the age passes the alert threshold.",
                ),
                Panel(
                    "Last backup size",
                    [Query("max(appliance_backup_last_size_bytes)", "archive", True)],
                    kind="stat",
                    unit="bytes",
                    width=8,
                    height=5,
                ),
                Panel(
                    "Backups per day",
                    [
                        Query(
                            "sum by (outcome) (increase(appliance_backup_runs_total[1d]))",
                            "{{outcome}}",
                        )
                    ],
                    custom={"drawStyle": "bars", "fillOpacity": 60},
                ),
                Panel(
                    "Last backup duration",
                    [Query("max(appliance_backup_last_duration_seconds)", "duration")],
                    unit="s",
                ),
            ],
        ),
    ]
    return dashboard("appliance-pipelines", "Appliance / Training and pipelines", rows, [])


def host() -> dict[str, Any]:
    """CPU, memory, disk and network from node exporter, the object store from SeaweedFS, GPU from
    the DCGM exporter."""
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
            "Object store",
            [
                Panel(
                    "Store disk used",
                    [
                        Query(
                            'SeaweedFS_volumeServer_resource{type="used"}'
                            ' / SeaweedFS_volumeServer_resource{type="all"}',
                            "{{instance}}",
                        )
                    ],
                    unit="percentunit",
                    description="The disk holding the object store's volumes (SeaweedFS).",
                ),
                Panel(
                    "Stored bytes by bucket",
                    [
                        Query(
                            'sum by (collection) (SeaweedFS_volumeServer_total_disk_size{type="normal"})',
                            "{{collection}}",
                        )
                    ],
                    unit="bytes",
                ),
                Panel(
                    "S3 requests",
                    [Query(f"sum by (type) (rate(SeaweedFS_s3_request_total[{RATE}]))", "{{type}}")],
                    unit="reqps",
                ),
                Panel(
                    "S3 errors",
                    [
                        Query(
                            f'sum by (code) (rate(SeaweedFS_s3_request_total{{code!~"2.."}}[{RATE}]))',
                            "{{code}}",
                        )
                    ],
                    unit="reqps",
                    description="Refused keys and permissions show as 403.",
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

"""The retraining controller: a cron schedule and Alertmanager's drift webhook start pipelines.

``python -m appliance.workloads.controller --state-dir DIR --pipelines-dir DIR ...`` serves
``/healthz``, ``/metrics``, ``/runs``, ``POST /pipelines/NAME/run`` and ``POST /alerts``. Runs
execute in background threads through ``appliance.pipelines``, sharing the run records and the
per-model locks with ``appliance pipeline run``.
"""

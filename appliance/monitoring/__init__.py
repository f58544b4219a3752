"""Monitoring configuration generated from the answers file.

Prometheus, Alertmanager and Grafana are configured from Python rather than from hand-kept files
so that the answers (ports, drift threshold, SLOs, webhook) flow into every file the same way and
so that tests can render the exact files a user gets and check them with ``promtool``/``amtool``.
Modules: ``prometheus_config`` (scrape config), ``rules`` (alert rules), ``alertmanager_config``
(routing), ``dashboards`` (Grafana dashboard JSON, built with ``panels`` in ``dashboards_model``
and ``dashboards_ops``), ``grafana`` (metric names in dashboards, API provisioning), ``promql``
(metric names in a query), ``catalog`` (the metric names the stack exports), ``generate`` (all
of it from an :class:`~appliance.answers.Answers` and the stack's services).
"""

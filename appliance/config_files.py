"""Generators for the config files services read (``config_files:`` in the stack).

Each generator gets the context and every rendered service, so a file can describe the stack as
a whole (Prometheus scrapes every service that declares ``metrics``). The text they return is part
of the service's config hash: a new scrape target recreates Prometheus, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml

from appliance.context import AppContext
from appliance.stack import RenderedService

Generator = Callable[[AppContext, dict[str, RenderedService]], str]


def prometheus_yml(ctx: AppContext, services: dict[str, RenderedService]) -> str:
    """Scrape config: one job per service that exposes metrics."""
    jobs = [
        {"job_name": name, "static_configs": [{"targets": [svc.metrics]}]}
        for name, svc in sorted(services.items())
        if svc.metrics
    ]
    config = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"}, "scrape_configs": jobs}
    return yaml.safe_dump(config, sort_keys=False)


GENERATORS: dict[str, Generator] = {"prometheus_yml": prometheus_yml}

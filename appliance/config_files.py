"""Generators for the config files services read (``config_files:`` in the stack).

Each generator gets the context and every rendered service, so a file can describe the stack as
a whole (Prometheus scrapes every service that declares ``metrics``). The text they return is part
of the service's config hash: a new scrape target recreates Prometheus, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.gateway import gateway_nginx
from appliance.mlflow_auth import auth_ini as mlflow_auth_ini
from appliance.monitoring.generate import GENERATORS as MONITORING_GENERATORS
from appliance.monitoring.grafana_files import GENERATORS as GRAFANA_GENERATORS
from appliance.objectstore.identities import s3_config as seaweedfs_s3_config
from appliance.objectstore.identities import security_toml as seaweedfs_security
from appliance.pipelines.elyra_runtime import runtime_config as elyra_runtime_config
from appliance.pipelines.elyra_runtime import runtime_image_config as elyra_image_config
from appliance.stack import STACKS_DIR
from appliance.workloads.binding import controller_models
from appliance.workloads.controller.backups import backup_config as controller_backup

Generator = Callable[[Any, Any], str]


def retrain_pipeline(ctx: Any, services: Any) -> str:
    """The stack's retrain pipeline (``stacks/pipelines/retrain.yaml``), for a controller that runs
    where the project's ``stacks/`` folder is not (a container: it reads ``{config}``)."""
    return (STACKS_DIR / "pipelines" / "retrain.yaml").read_text()


GENERATORS: dict[str, Generator] = {
    **MONITORING_GENERATORS,
    **GRAFANA_GENERATORS,
    "retrain_pipeline": retrain_pipeline,
    "elyra_runtime_config": elyra_runtime_config,
    "elyra_image_config": elyra_image_config,
    "controller_models": controller_models,
    "controller_backup": controller_backup,
    "gateway_nginx": gateway_nginx,
    "mlflow_auth_ini": mlflow_auth_ini,
    "seaweedfs_s3_config": seaweedfs_s3_config,
    "seaweedfs_security": seaweedfs_security,
}

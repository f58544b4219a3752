"""Upgrades and rollbacks between appliance releases installed side by side.

- ``releases``: ``STATE/releases/VERSION`` (code + a virtualenv sharing the base's packages) and
  which one the stack runs from;
- ``changes``: what an upgrade will change (versions, packages, images, MLflow's schema);
- ``journal``: ``STATE/upgrade.json``, the upgrade's phase, so an interrupted one is found;
- ``run``: backup, apply with health gates, automatic rollback.
"""

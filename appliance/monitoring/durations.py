"""Prometheus duration strings (``30s``, ``5m``, ``1h30m``), checked before they reach a config.

A bad duration in the answers file would otherwise surface only when Prometheus or Alertmanager
refuses to load its config at service start; checking here turns it into a clear error at render
time that names the setting.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")


def check_duration(value: str, setting: str) -> str:
    """Return ``value`` when it is a Prometheus duration, else raise ``ValueError`` naming ``setting``."""
    if not value or not _DURATION.match(value):
        raise ValueError(f"{setting} is {value!r}, not a Prometheus duration (e.g. 30s, 5m, 1h)")
    return value

#!/usr/bin/env bash
# Installs what the appliance needs, from nothing, and is cheap to run again:
#   - system packages (Prometheus, Alertmanager, node exporter, nginx for the TLS gateway, tmux,
#     h2load from nghttp2-client for the serving benchmark, libb64 for Triton's perf_analyzer,
#     PostgreSQL's server for the database-import tests)
#     through apt when root,
#     or prints the exact command to run otherwise;
#   - the project's virtualenv (.venv) with the Python extras asked for (default: everything a
#     lab host runs; `dev` adds the test tools).
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh lab,train,serving,controller,tui,dev
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-lab,train,serving,controller,tui}"
APT_PACKAGES=(prometheus prometheus-alertmanager prometheus-node-exporter tmux curl iproute2 nginx nghttp2-client
  libb64-0d postgresql)
# Test-only tools: vagrant checks the cluster lab's Vagrantfile (`vagrant validate --ignore-provider`).
if [[ ",$EXTRAS," == *",dev,"* ]]; then APT_PACKAGES+=(vagrant); fi
# The browser test of the workbench's pipeline editor drives Debian's chromium (dev only).
if [[ ",$EXTRAS," == *",dev,"* ]]; then APT_PACKAGES+=(chromium); fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
# Debian starts these as system services on install; the appliance runs its own, on its own ports.
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter nginx postgresql >/dev/null 2>&1 || true
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "==> installing Python packages [$EXTRAS] (torch is the CPU build, pinned)"
  .venv/bin/pip install -q --progress-bar off -e ".[${EXTRAS}]"
  # Elyra's pipeline editor in the workbench, without its pins (see the lab extra in pyproject.toml)
  if [[ ",$EXTRAS," == *",lab,"* ]]; then
    .venv/bin/pip install -q --progress-bar off --no-deps "elyra==4.1.0"
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "==> ready: $(.venv/bin/appliance --version)"

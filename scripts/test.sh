#!/usr/bin/env bash
# The whole test run, as CI runs it: install from nothing, lint, type-check, every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh lab,train,serving,controller,tui,containers,dev
if [ -x scripts/setup-containers.sh ] && [ "$(id -u)" = 0 ]; then
  scripts/setup-containers.sh
fi
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy appliance tui
echo "==> answers schema is fresh"
.venv/bin/appliance schema --check schemas/answers.schema.json
echo "==> tests"
exec .venv/bin/python -m pytest tests -p no:cacheprovider "$@"

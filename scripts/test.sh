#!/usr/bin/env bash
# The whole test run, as CI runs it: install from nothing, lint, type-check, every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh lab,train,serving,controller,tui,containers,cluster,dev
if [ -x scripts/setup-containers.sh ] && [ "$(id -u)" = 0 ]; then
  scripts/setup-containers.sh
fi
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy appliance tui benchmarks
echo "==> answers schema is fresh"
.venv/bin/appliance schema --check schemas/answers.schema.json
echo "==> tests"
# Every runtime (local, podman, docker) is installed above: a test that needs one fails rather than
# skips when it is missing. APPLIANCE_REQUIRE_RUNTIMES=0 lets a machine without them skip instead.
export APPLIANCE_REQUIRE_RUNTIMES="${APPLIANCE_REQUIRE_RUNTIMES:-1}"
# One process by default. APPLIANCE_TEST_WORKERS=N spreads the run over N pytest-xdist workers
# (tests/conftest.py: work_unit_of), for machines with more cores: on CI's 2 cores two workers
# measured no faster (79 min against 76) and timing-bound tests failed under the contention.
WORKERS="${APPLIANCE_TEST_WORKERS:-0}"
# CI's tier leaves out the extended one (tests/conftest.py: EXTENDED), which would take the run past
# CI's 90 minutes; APPLIANCE_TEST_ALL=1 (make test-all) runs every test.
TIER=(-m "not extended")
if [ "${APPLIANCE_TEST_ALL:-0}" != 0 ]; then
  TIER=()
fi
if [ "$WORKERS" = 0 ]; then
  exec .venv/bin/python -m pytest tests -p no:cacheprovider "${TIER[@]}" "$@"
fi
exec .venv/bin/python -m pytest tests -p no:cacheprovider "${TIER[@]}" -n "$WORKERS" --dist loadgroup "$@"

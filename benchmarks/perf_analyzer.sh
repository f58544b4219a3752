#!/usr/bin/env bash
# Runs Triton's perf_analyzer (from tritonclient's wheel, in .venv/bin) with the CUDA runtime
# library it links against (pip's nvidia-cuda-runtime-cu12, from the dev extra) on the library
# path; libb64 comes from apt (scripts/bootstrap.sh). Arguments go to perf_analyzer unchanged:
#   benchmarks/perf_analyzer.sh -m NAME -u 127.0.0.1:HTTP_PORT -i http \
#       -H "Authorization: Bearer $(cat STATE/secrets/serving_token)" --concurrency-range 1:32:2
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
lib="$("$py" -c 'import nvidia.cuda_runtime as m, pathlib; print(pathlib.Path(next(iter(m.__path__))) / "lib")')"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$root/.venv/bin/perf_analyzer" "$@"

#!/usr/bin/env bash
# perf_analyzer's table against the model server, over HTTP (with the inference token) and gRPC
# (a second server with auth off: perf_analyzer sends -H headers over HTTP only), at
# concurrency 1..32, on the test MLP (input [N,8] float32). Prints a markdown table and the load.
#   benchmarks/perf_analyzer_table.sh [MEASUREMENT_MS] [SHARED_MEMORY]
# SHARED_MEMORY "system": tensors through POSIX shared memory (the servers run with
# --allow-client-shm, perf_analyzer with --shared-memory system); "none" (the default): in the body.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
ms="${1:-2000}"
shm="${2:-none}"
case "$shm" in none) allow=();; system) allow=(--allow-client-shm);; *) echo "SHARED_MEMORY must be none or system, not $shm" >&2; exit 2;; esac
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
.venv/bin/python -c "from pathlib import Path; from tests.integration._serving_fixtures import write_mlp; write_mlp(Path('$work/mlp'))"
token="$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')"
start() {  # start NAME TOKEN: prints the ready line's ports into $work/NAME.json
  APPLIANCE_SERVING_TOKEN="$2" APPLIANCE_SERVING_ADMIN_TOKEN="" .venv/bin/python -m appliance.workloads.serving \
    --http-port 0 --grpc-port 0 --metrics-port 0 --model "$work/mlp" --poll-seconds 0 "${allow[@]}" \
    >"$work/$1.out" 2>"$work/$1.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '"ready"' "$work/$1.out" 2>/dev/null && return; sleep 0.2; done
  echo "server $1 did not start: $(tail -5 "$work/$1.log")" >&2; exit 1
}
port() { .venv/bin/python -c "import json,sys; print(json.loads([l for l in open('$work/$1.out') if '\"ready\"' in l][0])['$2'])"; }
start authed "$token"
start open ""
echo "| protocol | concurrency | infer/s | p50 (us) | p99 (us) | server queue (us) | server compute (us) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for proto in http grpc; do
  if [ "$proto" = http ]; then args=(-u "127.0.0.1:$(port authed http_port)" -i http -H "Authorization: Bearer $token")
  else args=(-u "127.0.0.1:$(port open grpc_port)" -i grpc); fi
  for c in 1 2 4 8 16 32; do
    benchmarks/perf_analyzer.sh -m mlp "${args[@]}" --concurrency-range "$c:$c" --shared-memory "$shm" \
      --measurement-interval "$ms" --stability-percentage 50 -f "$work/pa.csv" >"$work/pa.out" 2>&1 \
      || { echo "perf_analyzer failed ($proto, c=$c): $(tail -5 "$work/pa.out")" >&2; exit 1; }
    .venv/bin/python - "$work/pa.csv" "$proto" "$c" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {float(row['Inferences/Second']):,.0f} | {row['p50 latency']} | "
      f"{row['p99 latency']} | {row['Server Queue']} | {int(row['Server Compute Input']) + int(row['Server Compute Infer']) + int(row['Server Compute Output'])} |")
PY
  done
done
echo
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"

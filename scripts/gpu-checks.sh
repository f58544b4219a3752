#!/usr/bin/env bash
# The checks CI cannot run, on a GPU machine: CUDA training and NCCL (torch), the CUDA execution
# provider with serving replicas sharing one GPU, and serving throughput on CUDA and on the CPU
# cores against ONNX Runtime alone. Run it with the project's Python environment, onnxruntime-gpu
# in place of onnxruntime (the tests that need a GPU skip without one, with the reason).
#
#   scripts/gpu-checks.sh [STEP ...]      steps: train serving cpu-scaling cuda-bench (the default),
#                                         balancer-hop (nginx against HAProxy, CPU per gRPC call)
#
# Results (test logs, benchmark tables and JSON) go to $GPU_CHECKS_OUT, by default
# benchmarks/results/gpu-<time>/. The benchmarks pin the servers (and ONNX Runtime alone, the
# floor) to the first half of the cores and the load clients to the second half, so that the
# clients never take a core from what they measure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${GPU_CHECKS_OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(train serving cpu-scaling cuda-bench)

cores=$(nproc)
half=$((cores / 2))
servers="0-$((half - 1))"
clients="$half-$((cores - 1))"
# Replica counts up to the servers' cores: 1, 1b (one behind the balancer: what it costs), 2, 4,
# ... and the count itself.
counts=1,1b
n=2
while [ "$n" -lt "$half" ]; do counts="$counts,$n"; n=$((n * 2)); done
[ "$half" -gt 1 ] && counts="$counts,$half"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv" || echo "no GPU: nvidia-smi failed"
"$PY" -c 'import onnxruntime as o, torch; print("onnxruntime", o.__version__, o.get_available_providers()); print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count())' | tee "$out/versions.txt"

bench() {  # bench NAME ARGS...: the serving benchmark, servers and clients on their own cores
    local name=$1
    shift
    taskset -c "$clients" "$PY" benchmarks/serving/run.py --peers none --server-cpus "$servers" \
        --cores "$half" --client-processes "$half" --grpc-connections 8 --grpc-threads 4 "$@" 2>&1 | tee "$out/$name.md"
}

failed=()
run_step() {
    case $1 in
        train)
            "$PY" -m pytest -p no:cacheprovider -q tests/integration/test_trainer_cuda.py \
                tests/unit/test_trainer_ddp.py 2>&1 | tee "$out/train-tests.log"
            ;;
        serving)
            "$PY" -m pytest -p no:cacheprovider -q tests/integration/test_serving_cuda.py 2>&1 \
                | tee "$out/serving-tests.log"
            ;;
        cpu-scaling)
            bench cpu-scaling --provider cpu --models mlp,cnn --replicas "$counts" --concurrency 64 \
                --seconds "${BENCH_SECONDS:-2}" --warmup 0.5 --no-ceiling
            ;;
        cuda-bench)
            bench cuda --provider cuda --models "${CUDA_MODELS:-cnn,mlp}" --replicas 1,2,4 --concurrency 64 \
                --seconds "${BENCH_SECONDS:-2}" --warmup 0.5 --no-ceiling
            ;;
        balancer-hop)
            "$PY" benchmarks/serving/balancer_hop.py 2>&1 | tee "$out/balancer-hop.md"
            ;;
        *)
            echo "unknown step $1 (train, serving, cpu-scaling, cuda-bench, balancer-hop)" >&2
            return 2
            ;;
    esac
}
for step in "${steps[@]}"; do
    echo "=== $step ($(date -u +%H:%M:%S))"
    run_step "$step" || failed+=("$step")
done
echo "results in $out"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi

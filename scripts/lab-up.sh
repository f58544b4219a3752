#!/usr/bin/env bash
# Brings the lab stack up, then (once) seeds the demo dataset and trains the first champion, so a
# new user sees a registered, served model without typing more. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/appliance
$A up
$A data seed --dataset breast_cancer
if ! $A models list 2>/dev/null | grep -q champion; then
  $A train --dataset breast_cancer
fi
$A status
# The served champion: wait for the server to pick it up (it polls the registry alias), then show
# a request that works, with the generated token.
serving=$($A status --json | .venv/bin/python -c \
  'import json,sys; s=json.load(sys.stdin)["services"].get("serving"); print(s["url"] if s else "")')
if [ -n "$serving" ]; then
  echo "==> waiting for the model server to load the champion"
  for _ in $(seq 1 60); do
    if curl -fs "$serving/health/ready" >/dev/null; then break; fi
    sleep 2
  done
  body=$(.venv/bin/python -c '
import json
from sklearn.datasets import load_breast_cancer
row = load_breast_cancer().data[:1].astype("float32")
print(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(row.shape), "data": row.ravel().tolist()}]}))')
  echo "==> try the served model:"
  echo "curl -s -H \"Authorization: Bearer \$($A secrets show serving_token)\" \\"
  echo "  -H 'Content-Type: application/json' $serving/models/breast_cancer/infer -d '$body'"
  curl -fsS -H "Authorization: Bearer $($A secrets show serving_token)" \
    -H 'Content-Type: application/json' "$serving/models/breast_cancer/infer" -d "$body" && echo
fi

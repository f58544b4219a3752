#!/usr/bin/env bash
# Brings the lab stack up, then (once) seeds the demo dataset and trains the first champion, so a
# new user sees a registered model without typing more. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
A=.venv/bin/appliance
$A up
if $A --help | grep -q "^  data "; then
  $A data seed --dataset breast_cancer
fi
if $A --help | grep -q "^  train " && ! $A models list 2>/dev/null | grep -q champion; then
  $A train --dataset breast_cancer
fi
$A status

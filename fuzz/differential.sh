#!/bin/sh
# Differential testing of the pipeline on N random graphs (default 10000), seeds START..START+N:
#   fuzz/differential.sh 20000 [START]
set -eu
cd "$(dirname "$0")/.."
ONNXSMITH_DIFF_N="${1:-10000}" ONNXSMITH_DIFF_START="${2:-0}" \
    cargo test --release --test differential -- --nocapture 2>&1 |
    grep -E '^(differential:|skipped seed|seed [0-9]+:|test result)|failed:|^    |^\|' || true

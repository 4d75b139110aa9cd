#!/usr/bin/env bash
# Prints a short human-readable summary of the demo's runs (each RUN.jsonl in the folder) to stderr.
set -euo pipefail
dir=${1:-runs/demo}
{
  echo
  echo "demo summary ($dir)"
  for log in "$dir"/*.jsonl; do
    run=$(basename "$log" .jsonl)
    awk -v run="$run" '
      {
        ep = ""; tl = ""; vl = ""; acc = ""; ck = ""
        if (match($0, /"epoch":[0-9]+/)) ep = substr($0, RSTART + 8, RLENGTH - 8)
        if (match($0, /"train_loss":[-0-9.eE+]+/)) tl = substr($0, RSTART + 13, RLENGTH - 13)
        if (match($0, /"test_loss":[-0-9.eE+]+/)) vl = substr($0, RSTART + 12, RLENGTH - 12)
        if (match($0, /"test_acc":[-0-9.eE+]+/)) acc = substr($0, RSTART + 11, RLENGTH - 11)
        if (match($0, /"checkpoint":"[^"]*"/)) ck = substr($0, RSTART + 14, RLENGTH - 15)
        printf "  %-6s epoch %2s  train loss %.4f  test loss %.4f  test acc %.2f%%  %s\n", run, ep, tl, vl, 100 * acc, ck
      }' "$log"
  done
  echo "  records: $dir/*.jsonl; checkpoints load in PyTorch (see README)"
} >&2

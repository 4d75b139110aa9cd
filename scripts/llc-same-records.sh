#!/usr/bin/env bash
# Two builds, the same SGLD chains: runs `llc` of build A and of build B on the same transformer checkpoint
# (transformer_1l on `datagen modular --p 113 --op add --train-fraction 0.3 --seed 1`, two AdamW epochs by
# build A's `train`) in three settings — 3 chains on 1 thread (later chains on an earlier chain's buffers,
# burn-in, batch 512), 3 chains on 2 threads with a bounding box (batch 256), and the restricted λ̂ of two
# checkpoints (`--only`, batch 128) — and compares the records and the per-draw traces (`--trace-out`) once the
# wall times (`seconds*`) are removed. They must be identical: a change to the sampler's speed (buffers,
# kernels) must not move a chain's numbers (issue #16; the byte-identity test covers MLP and LeNet chains).
# Usage: scripts/llc-same-records.sh BIN_A BIN_B [WORK_DIR]
#   BIN_A, BIN_B: folders holding each build's `datagen`, `train` and `llc` (copies of target/release/...)
set -euo pipefail
a=$1; b=$2; work=${3:-$(mktemp -d)}
command -v jq >/dev/null || { echo "llc-same-records: jq is needed" >&2; exit 1; }
mkdir -p "$work"; cd "$work"
"$a/datagen" modular --p 113 --op add --train-fraction 0.3 --seed 1 --out add.safetensors > datagen.json
"$a/train" --model transformer_1l --data add.safetensors --optimizer adamw --lr 1e-3 --weight-decay 1 \
  --batch-size 512 --epochs 2 --seed 3 --out run --overwrite > train.jsonl 2> train.err
settings=(
  "run/epoch-0002.safetensors --epsilon 3e-5 --gamma 1000 --nbeta dataset --batch-size 512 --chains 3 --threads 1 --burn-in 10 --draws 40 --seed 5"
  "run/epoch-0002.safetensors --epsilon 1e-4 --gamma 100 --batch-size 256 --chains 3 --threads 2 --draws 30 --bounding-box 0.01 --seed 6"
  "run/epoch-0001.safetensors run/epoch-0002.safetensors --epsilon 1e-4 --gamma 100 --batch-size 128 --chains 2 --threads 1 --draws 30 --only *.in_proj_weight,3.0.* --seed 7"
)
norm='walk(if type == "object" then with_entries(select(.key | startswith("seconds") | not)) else . end)'
fail=0
for i in "${!settings[@]}"; do
  for side in a b; do
    bin=$a; [ "$side" = b ] && bin=$b
    # shellcheck disable=SC2086 # the settings are words
    "$bin/llc" ${settings[$i]} --data add.safetensors --quiet --trace-out "trace-$i-$side.jsonl" > "rec-$i-$side.jsonl"
  done
  for f in rec trace; do
    if cmp -s <(jq -c -S "$norm" "$f-$i-a.jsonl") <(jq -c -S "$norm" "$f-$i-b.jsonl"); then
      echo "llc-same-records: setting $i: ${f}s identical ($(wc -l < "$f-$i-a.jsonl") lines, times removed)"
    else
      echo "llc-same-records: setting $i: ${f}s DIFFER" >&2; fail=1
      diff <(jq -c -S "$norm" "$f-$i-a.jsonl") <(jq -c -S "$norm" "$f-$i-b.jsonl") | head -4 >&2 || true
    fi
  done
done
exit $fail

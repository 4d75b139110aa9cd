#!/usr/bin/env bash
# Same seed, same result: compares the transformer study's records of one seed (mk/transformers.mk) with those
# of the same runs made again. The records must be identical once the fields that are wall-clock times
# (`seconds`, `seconds_per_chain`) are removed and each file's run folder (in the paths it names) is replaced by
# RUNS/; the last checkpoints' tensors must be byte-identical too when both are there.
# Usage: [RUNS_A=study/table RUNS_B=again/table] scripts/transformer-study-same-seed.sh STUDY_TABLE_DIR AGAIN_TABLE_DIR SEED VARIANT...
# (RUNS_A/RUNS_B: the run folders holding the last checkpoints, compared when given)
set -euo pipefail
a=$1; b=$2; seed=$3; shift 3
command -v jq >/dev/null || { echo "transformer-study-same-seed: jq is needed" >&2; exit 1; }
# Paths inside the records name the run folder (runs/transformers-again/... here, and whatever TSTUDY_RUNS the study
# was saved from: results/transformers/records name runs/transformers-main/...). Each file's run folder is the
# folder of its first record's data file; it is replaced by RUNS/ (a literal split, not a regex) in every string.
run_folder() { local d; d=$(head -1 "$1" | jq -r '.data_file // empty'); [ -n "$d" ] && dirname "$d" || echo "//no run folder//"; }
norm='walk(if type == "object" then del(.seconds, .seconds_per_chain) elif type == "string" then (split($runs + "/") | join("RUNS/")) else . end)'
fail=0
for v in "$@"; do
  for f in s$seed.jsonl s$seed.curves.jsonl; do
    if [ ! -s "$a/$v/$f" ] || [ ! -s "$b/$v/$f" ]; then echo "same-seed: $v/$f missing in $a or $b" >&2; fail=1; continue; fi
    ja=$(jq -c -S --arg runs "$(run_folder "$a/$v/$f")" "$norm" "$a/$v/$f")
    jb=$(jq -c -S --arg runs "$(run_folder "$b/$v/$f")" "$norm" "$b/$v/$f")
    if [ "$ja" = "$jb" ]; then
      echo "same-seed: $v/$f identical ($(wc -l < "$a/$v/$f") records, times and run folder removed)"
    else
      echo "same-seed: $v/$f DIFFERS" >&2; fail=1
      diff <(echo "$ja") <(echo "$jb") | head -4 >&2 || true
    fi
  done
done
# The tensor bytes of a safetensors file: everything after its header (8-byte little-endian length, then JSON
# whose metadata names the run folder's data file path, which differs between the two folders).
tensor_bytes() { local n; n=$(od -An -t u8 -N 8 "$1" | tr -d ' '); tail -c +$((9 + n)) "$1"; }
# The last checkpoints' tensors (weights; the sidecar's optimiser state), where both run folders still hold them.
ra=${RUNS_A:-}; rb=${RUNS_B:-}
if [ -n "$ra" ] && [ -n "$rb" ]; then
  for v in "$@"; do
    ca=$(ls "$ra/$v/s$seed"/epoch-*[0-9].safetensors 2>/dev/null | tail -1 || true)
    [ -n "$ca" ] || continue
    for c in "$ca" "$ca.optim.safetensors"; do
      cb="$rb/$v/s$seed/$(basename "$c")"
      if [ -s "$c" ] && [ -s "$cb" ] && cmp -s <(tensor_bytes "$c") <(tensor_bytes "$cb"); then
        echo "same-seed: $v $(basename "$c"): tensors byte-identical"
      else echo "same-seed: $v $(basename "$c") differs or is missing" >&2; fail=1; fi
    done
  done
fi
exit $fail

#!/usr/bin/env bash
# λ̂ of deep linear networks through the tools against Aoyagi's closed form (issue #15):
# for each case a bias-free linear spec, a teacher whose first weight has rank r (datagen teacher
# --low-rank), n samples x ~ U(-10, 10)^N without noise, and llc at the teacher's own weights with the
# mean squared error. Prints a markdown table (case, λ, λ̂ ± sd over chains, ratio) on stdout.
#
#   scripts/dln-check.sh [BIN_DIR] [WORK_DIR]
#
# Settings (the same for every case, recorded in each llc record): n = SAMPLES (default 100,000),
# nβ = n/ln n, ε = EPS (default 2.5e-7, so ε·nβ ≈ 2e-3), γ = GAMMA (default 1), minibatch 500, CHAINS
# chains (default 4) × DRAWS draws (default 100,000) after BURN (default 20,000) steps of burn-in,
# seed 1 (data, teacher and chains). CASES lists widths:rank pairs. About a minute on 2 cores.
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-target}/release}
work=${2:-runs/dln-check}
eps=${EPS:-2.5e-7}
gamma=${GAMMA:-1}
chains=${CHAINS:-4}
samples=${SAMPLES:-100000}
cases=${CASES:-5,5,5:2 10,10,10,10:5 8,12,6,10:3 10,20,20,10:5}
draws=${DRAWS:-100000}
burn=${BURN:-20000}
mkdir -p "$work"
echo "| widths (input → output) | rank | Aoyagi's λ (m) | λ̂ ± sd over $chains chains | λ̂ / λ |"
echo "| --- | --- | --- | --- | --- |"
for case in $cases; do
  widths=${case%%:*}; rank=${case##*:}
  name="dln-${widths//,/-}-r$rank"
  IFS=, read -ra w <<< "$widths"
  layers=""
  for ((i = 1; i < ${#w[@]}; i++)); do
    layers+="${layers:+, }{\"type\": \"linear\", \"out\": ${w[$i]}, \"bias\": false}"
  done
  printf '{"input": [%s], "layers": [%s], "loss": "mse"}\n' "${w[0]}" "$layers" > "$work/$name.json"
  rm -f "$work/$name.data.safetensors" "$work/$name.teacher.safetensors"
  "$bin/datagen" teacher --model "$work/$name.json" --low-rank "0.weight:$rank" --samples "$samples" \
    --input-dist uniform:10 --seed 1 --out "$work/$name.data.safetensors" \
    --teacher-out "$work/$name.teacher.safetensors" > /dev/null
  "$bin/llc" --data "$work/$name.data.safetensors" --nbeta dataset --epsilon "$eps" --gamma "$gamma" \
    --batch-size 500 --chains "$chains" --draws "$draws" --burn-in "$burn" --seed 1 --quiet \
    "$work/$name.teacher.safetensors" > "$work/$name.llc.jsonl"
  python3 - "$work/$name.llc.jsonl" "$widths" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])["llc"]
t = r["theory"]
print(f"| {sys.argv[2].replace(',', ' → ')} | {t['rank']} | {t['lambda']:g} ({t['multiplicity']}) | "
      f"{r['llc']:.2f} ± {r['llc_sd']:.2f} | {r['llc'] / t['lambda']:.3f} |")
PY
done

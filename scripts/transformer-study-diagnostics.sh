#!/usr/bin/env bash
# The transformer study's diagnostics from its committed records (mk/transformers.mk, results/transformers.md):
# per optimiser, the λ̂ estimates' verdicts and warnings, diverged chains, R-hat and MALA acceptance, the Hessian
# trace's relative standard error, and which seeds reach 100% training accuracy (and when, at the resolution of
# the curves' records). Markdown on stdout.
# Usage: scripts/transformer-study-diagnostics.sh RECORDS_DIR LAST_EPOCH
set -euo pipefail
dir=$1
last=$2
command -v jq >/dev/null || { echo "transformer-study-diagnostics: jq is needed" >&2; exit 1; }

echo "# Diagnostics of the transformer study"
echo
echo "## λ̂ estimates (every λ̂ epoch of every seed)"
echo
echo "| optimiser | estimates | verdict ok | with warnings | diverged chains | R-hat median (max) | MALA acceptance min–max | chains moving away from w* |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for v in $(ls "$dir/table"); do
  files=$(ls "$dir/table/$v"/s*.jsonl 2>/dev/null | grep -v curves || true)
  [ -n "$files" ] || continue
  cat $files | jq -s -r --arg v "$v" '
    [.[] | select(.llc != null) | .llc] as $l
    | ($l | map(.diagnostics.rhat) | sort) as $r
    | ($l | map(.diagnostics.mala_acceptance_mean)) as $a
    | "| \($v) | \($l | length) | \($l | map(select(.verdict == "ok")) | length) | \($l | map(select(.verdict != "ok")) | length) | \($l | map(.excluded_chains // [] | length) | add) | \($r[($r | length) / 2 | floor] * 1000 | round / 1000) (\($r[-1] * 1000 | round / 1000)) | \($a | min * 100 | round / 100)–\($a | max * 100 | round / 100) | \($l | map(.diagnostics.distance_from_w_star // [] | map(select(.moving_away)) | length) | add) |"'
done
echo
echo "Warnings, by kind (the text before the first digit or colon), over all estimates:"
echo
for v in $(ls "$dir/table"); do
  files=$(ls "$dir/table/$v"/s*.jsonl 2>/dev/null | grep -v curves || true)
  [ -n "$files" ] || continue
  kinds=$(cat $files | jq -r 'select(.llc != null) | .llc.warnings[]? | sub("[0-9:(].*$"; "") ' | sort | uniq -c | sort -rn \
    | awk '{n=$1; $1=""; sub(/^ /, ""); printf "%s%s × %d", (NR > 1 ? "; " : ""), $0, n}')
  echo "- $v: ${kinds:-none}"
done
echo
echo "Estimates with a diverged chain (excluded from the mean by llc) or another warning, one line each:"
echo
for v in $(ls "$dir/table"); do
  for f in $(ls "$dir/table/$v"/s*.jsonl 2>/dev/null | grep -v curves || true); do
    jq -r --arg v "$v" 'select(.llc != null and .llc.verdict != "ok")
      | "- \($v) seed \(.seed) epoch \(.epoch): λ̂ \(.llc.llc * 10 | round / 10); \(.llc.warnings | map(sub(":.*$"; "")) | join("; "))"' "$f"
  done
done
echo
echo "## Hessian trace (Hutch++) at epoch $last"
echo
echo "| optimiser | runs | relative standard error, median (max) |"
echo "| --- | --- | --- |"
for v in $(ls "$dir/table"); do
  files=$(ls "$dir/table/$v"/s*.jsonl 2>/dev/null | grep -v curves || true)
  [ -n "$files" ] || continue
  cat $files | jq -s -r --arg v "$v" '[.[] | select(.hessian != null) | (.hessian.trace_se / (.hessian.trace | fabs))] | sort as $e
    | "| \($v) | \($e | length) | \($e[($e | length) / 2 | floor] * 10000 | round / 100) % (\($e[-1] * 10000 | round / 100) %) |"'
done
echo
echo "## Training accuracy: 100% reached? (whole training set, from the curves' records)"
echo
echo "| optimiser | seeds | seeds at 100% at epoch $last | first logged epoch at 100%, per seed | test accuracy ≥ 99% at epoch $last |"
echo "| --- | --- | --- | --- | --- |"
for v in $(ls "$dir/table"); do
  files=$(ls "$dir/table/$v"/s*.curves.jsonl 2>/dev/null || true)
  [ -n "$files" ] || continue
  n=0; full=0; firsts=""; gen=0
  for f in $files; do
    n=$((n + 1))
    s=$(jq -s -r --argjson last "$last" '[.[] | select(.epoch == $last)][0] | "\(.train_acc) \(.test_acc)"' "$f")
    [ "${s%% *}" = 1 ] && full=$((full + 1))
    awk -v t="${s##* }" 'BEGIN { exit !(t >= 0.99) }' && gen=$((gen + 1))
    first=$(jq -s -r '[.[] | select(.train_acc == 1) | .epoch] | min // "never"' "$f")
    seed=$(jq -s -r '.[0].seed' "$f")
    firsts="$firsts${firsts:+, }s$seed: $first"
  done
  echo "| $v | $n | $full | $firsts | $gen |"
done

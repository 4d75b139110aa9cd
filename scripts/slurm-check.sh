#!/usr/bin/env bash
# make slurm-check: the Slurm path of the sweeps, tested on a real (single-node) Slurm cluster.
#
#  1. runs the paper-quick pipeline locally (make -j2), the reference;
#  2. starts slurmctld + slurmd on this machine (scripts/slurm-local-cluster.sh), submits the same pipeline
#     with SCHEDULER=slurm, and cancels one running array task (a LeNet run, which takes long enough to be caught
#     mid-run) with scancel;
#  3. checks that `make paper-quick-status` lists exactly that run as failed, with its log;
#  4. resubmits, and checks that exactly that run was submitted again (one task, the same file);
#  5. waits, and checks that every file the two paths wrote is the same: checkpoints, run records (apart from
#     their wall-clock `seconds`), tables and figures byte for byte;
#  6. stops the daemons (also on failure).
# Usage: scripts/slurm-check.sh WORKDIR (emptied first). Needs root, slurm-wlm and munge (installed if missing),
# the built tools and the data (the Makefile target makes both first).
set -euo pipefail
work=${1:?usage: slurm-check.sh WORKDIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
rm -rf "$work"; mkdir -p "$work"; work=$(cd "$work" && pwd)
make_=(make --no-print-directory -o build -o data)
vars=(PAPER_QUICK_RUNS="$work/runs" PAPER_QUICK_RESULTS="$work/results" "DATA=${DATA:-data}")
say() { echo "slurm-check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

t0=$(date +%s)
say "1. the local reference (make -j2 paper-quick)"
"${make_[@]}" -j2 paper-quick "${vars[@]}" > "$work/local.log" 2>&1 || fail "the local paper-quick failed (see $work/local.log)"
mkdir -p "$work/local"; mv "$work/runs" "$work/results" "$work/local/"
t1=$(date +%s)
say "   took $((t1 - t0)) s"

say "2. a single-node cluster"
cluster="$work/cluster"
trap 'scripts/slurm-local-cluster.sh stop "$cluster" || true' EXIT
trap 'exit 143' INT TERM
eval "$(scripts/slurm-local-cluster.sh start "$cluster")"
export SLURM_CONF
sinfo >&2

say "   submitting paper-quick with SCHEDULER=slurm"
"${make_[@]}" paper-quick SCHEDULER=slurm "${vars[@]}" 2> "$work/submit-1.log" || fail "submission failed (see $work/submit-1.log)"
table="$work/runs/sweep/paper-cnn/1"
jid=$(basename "$(ls "$table"/*.tasks)" .tasks)
victim=$(sed -n 1p "$table/$jid.tasks")
say "   waiting for task ${jid}_0 ($victim) to run, then cancelling it"
for _ in $(seq 1200); do
  [ "$(squeue -h -j "${jid}_0" -o %t 2>/dev/null)" = R ] && break
  sleep 0.5
done
sleep 2
[ "$(squeue -h -j "${jid}_0" -o %t)" = R ] || fail "task ${jid}_0 was not running 2 s after it started"
scancel "${jid}_0"
say "   waiting for the rest"
most_running=0
while [ -n "$(squeue -h -o %i)" ]; do
  running=$(squeue -h -t R -o %i | wc -l)
  [ "$running" -gt "$most_running" ] && most_running=$running
  sleep 1
done
t2=$(date +%s)
# The node has $(nproc) CPUs and each task asks for one: the arrays must use them all at once.
[ "$most_running" -ge "$(nproc)" ] || fail "at most $most_running task(s) ran at once on a node of $(nproc) CPUs"
say "   at most $most_running tasks ran at once"

say "3. the status lists the cancelled run as failed"
status=$("${make_[@]}" paper-quick-status "${vars[@]}" 2>&1) && fail "paper-quick-status exited 0 with a cancelled run:
$status"
echo "$status" >&2
failed=$(echo "$status" | grep -E '^(failed|not run) ' || true)
[ "$(echo "$failed" | wc -l)" = 1 ] && echo "$failed" | grep -qF "failed   $victim  (exit" \
  && echo "$failed" | grep -qF "log $table/logs/${jid}_0.log" \
  || fail "expected exactly $victim as failed with its log, got:
$failed"
[ ! -e "$victim" ] || fail "$victim exists although its task was cancelled"

say "4. resubmitting: exactly the cancelled run is submitted again"
touch "$work/resubmitted"
"${make_[@]}" paper-quick SCHEDULER=slurm "${vars[@]}" 2> "$work/submit-2.log" || fail "resubmission failed"
new=$(find "$work/runs/sweep" -name '*.tasks' -newer "$work/resubmitted" ! -path '*/report/*')
[ "$(echo "$new" | wc -l)" = 1 ] && [ "$(cat "$new")" = "$victim" ] \
  || fail "the resubmission's run tasks are not exactly $victim: $(for f in $new; do echo "$f:"; cat "$f"; done)"
while [ -n "$(squeue -h -o %i)" ]; do sleep 2; done
"${make_[@]}" paper-quick-status "${vars[@]}" >&2 || fail "runs still failed after the resubmission"
t3=$(date +%s)

say "5. the Slurm path's files against the local path's"
# Wall-clock fields ("seconds", "seconds_per_chain", ...) are the only ones allowed to differ, and the order of
# the records (switch --jobs 2 writes its branches' records as they finish, in either run).
normalise() { sed -E 's/"(seconds[a-z_]*)":(\[[^]]*\]|[-0-9.eE+]+)/"\1":_/g' "$1" | LC_ALL=C sort; }
n=0
while IFS= read -r -d '' f; do
  rel=${f#"$work/local/"}
  other="$work/$rel"
  [ -e "$other" ] || fail "$rel: written locally but not by the Slurm path"
  case $f in
    *.jsonl) cmp -s <(normalise "$f") <(normalise "$other") || fail "$rel differs (beyond its wall-clock seconds fields)" ;;
    *) cmp -s "$f" "$other" || fail "$rel differs" ;;
  esac
  n=$((n + 1))
done < <(find "$work/local" -type f -print0)
extra=$(cd "$work" && find runs results -type f ! -path 'runs/sweep/*' | while read -r f; do
  [ -e "local/$f" ] || echo "$f"; done)
[ -z "$extra" ] || fail "written by the Slurm path only: $extra"
say "   $n files identical ($(find "$work/local" -name '*.safetensors' | wc -l) checkpoints byte for byte)"
say "ok: local $((t1 - t0)) s, Slurm $((t2 - t1)) s, resubmission $((t3 - t2)) s"

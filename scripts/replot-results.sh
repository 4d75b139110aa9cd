#!/usr/bin/env bash
# Redraws the committed figures of results/quick and results/full-seeds1-5 from their JSON (`report replot`),
# with the titles mk/paper.mk gives them, without rerunning anything: for a change in how figures look.
# The tables (.md, .json) are not touched. results/beyond: make beyond-restore beyond-report (from records);
# results/beyond-quick: make beyond-quick (it reruns, in a minute or two).
#   usage: scripts/replot-results.sh [REPORT]   (default: $CARGO_TARGET_DIR/release/report or target/release/report)
set -euo pipefail
report=${1:-${CARGO_TARGET_DIR:-target}/release/report}
replot() { local json=$1; shift; "$report" replot "$json" "$@"; }

for r in results/full-seeds1-5:"19 20" results/quick:"2 3"; do
  dir=${r%%:*}; epochs=${r#*:}
  replot "$dir/paper-table.json" --title "LLC at epochs $epochs: SGD vs NGD (MNIST)"
  replot "$dir/paper-table-test-loss.json" --title "test loss"
done

q=results/quick
# paper-quick: SMOOTH_ARCH=mlp_1x64 SMOOTH_EPOCHS=3 SWITCH_AT=2.
replot $q/paper-smoothing-alpha.json --log-x --title "LLC against NGD's alpha (MLP mlp_1x64, epoch 3)"
replot $q/paper-smoothing-epsilon.json --log-x --title "LLC against NGD's epsilon (alpha 0)"
replot $q/paper-smoothing-damping.json --log-x --title "LLC against ngd-exact's relative damping"
replot $q/paper-smoothing.json --title "LLC at the last epoch, every smoothing setting"
for m in llc hessian-trace test-loss train-loss; do replot $q/paper-trace-$m.json; done
replot $q/paper-switch-llc.json --title "LLC: SGD to epoch 2, then branches"
replot $q/paper-switch-test-loss.json --title "test loss: SGD to epoch 2, then branches"
replot $q/paper-cnn-llc.json --title "LeNet: LLC, SGD vs NGD"
replot $q/paper-cnn-trace.json --title "LeNet: Hessian trace, SGD vs NGD"

# ngd-slt: train small networks with SGD or NGD and measure how degenerate their solutions are.
#
#   make demo    set up everything; SGD vs NGD: train, λ̂, Hessian trace, figures (newcomers start here)
#   make test    set up everything and run the whole test suite               (CI runs this)
#   make data    fetch and verify MNIST and Fashion-MNIST into data/
#   make build   build the tools in release mode
#   make bench   benchmarks of the hot paths, next to the compute floor (and PyTorch when installed)
#   make lint    cargo fmt --check and clippy -D warnings
#   make fuzz    fuzz the checkpoint reader: FUZZ_INPUTS mutated files (default 1,000,000)
#   make check-cuda  type-check the CUDA build (no GPU needed)
#   make crosscheck  compare with devinterp and PyTorch where they are installed (optional)
#   make dln-check   λ̂ of four deep linear networks through datagen + llc against Aoyagi's λ (a minute)
#   make devinterp-cases  devinterp's accuracy cases (reduced rank regression, ordinality, normal crossings) through the tools
#   make paper-quick the paper's experiments at small size, in minutes; make paper: all, full size
#   make beyond-quick issue #8 (is NGD's higher λ̂ rounding noise?) small, in minutes; make beyond-table: full
#   make transformer-quick  grokking (modular addition, AdamW) tracked by λ̂, in minutes; -plot: redraw only
#   make grokking-devinterp devinterp's grokking example (mod 53, MLP, Adam) with λ̂ per checkpoint; -long: to 100k steps; -transformer: transformer-quick's run; -plot: redraw
#   make transformer-study  SGD vs NGD (f32, f64) vs AdamW on a transformer, 10 seeds; -report: tables from the records
#   make icl-quick   in-context linear regression: test MSE per position against ridge / least squares, λ̂ (minutes)
#   make paper-table SCHEDULER=slurm  any sweep as Slurm job arrays; make sweep-status; make slurm-check (CI)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release
DATA ?= data
RUNS ?= runs

.PHONY: help deps data build demo test bench lint fuzz check-cuda clean crosscheck crosscheck-torch

help:
	@sed -n '3,19p' Makefile | sed 's/^# //'

# libopenblas-dev provides BLAS and LAPACK; fonts-dejavu-core the font of the figures. Installed
# with apt-get when run as root, otherwise the command to run is printed.
deps:
	@missing=""; \
	dpkg -s libopenblas-dev >/dev/null 2>&1 || missing="$$missing libopenblas-dev"; \
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make: installing$$missing" >&2; \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "make: missing$$missing; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

data:
	@scripts/fetch-data.sh $(DATA)

build: deps
	$(CARGO) build --release --workspace --bins

# The demo, the project's point in a few minutes: the MLP 784-128-10 on MNIST trained by SGD and by the
# paper's NGD from the same initialisation (seed 1), then λ̂ and the exact Hessian trace of every epoch's
# checkpoint through the pipeline train | llc | hessian-trace; a comparison on stderr and two figures
# (runs/demo/demo-llc.png, demo-trace.png). λ̂ uses the paper's SGLD settings (LLC_FLAGS in mk/paper.mk)
# with 4 chains instead of 1, so that it has an error (the sd over chains).
DEMO_EPOCHS ?= 10
DEMO_DRAWS ?= 1000
DEMO_CHAINS ?= 4
DEMO_LLC_FLAGS ?= --epsilon 1e-4 --gamma 100 --nbeta batch --batch-size 128 --chains $(DEMO_CHAINS) --draws $(DEMO_DRAWS)
demo: deps data build
	@rm -rf $(RUNS)/demo/sgd $(RUNS)/demo/ngd $(RUNS)/demo/*.jsonl $(RUNS)/demo/demo-*
	@mkdir -p $(RUNS)/demo
	@for opt in sgd ngd; do \
	  echo "make: demo: $$opt, $(DEMO_EPOCHS) epochs | llc ($(DEMO_CHAINS) chains x $(DEMO_DRAWS) draws) | hessian-trace" >&2; \
	  $(BIN)/train --model mlp --hidden 128 --dataset mnist --data-dir $(DATA) --optimizer $$opt \
	    --epochs $(DEMO_EPOCHS) --seed 1 --out $(RUNS)/demo/$$opt \
	  | $(BIN)/llc $(DEMO_LLC_FLAGS) --seed 1 --data-dir $(DATA) --quiet \
	  | $(BIN)/hessian-trace --data-dir $(DATA) --quiet > $(RUNS)/demo/$$opt.jsonl.tmp; \
	  mv $(RUNS)/demo/$$opt.jsonl.tmp $(RUNS)/demo/$$opt.jsonl; \
	done
	@$(BIN)/report curves --metric /llc/llc --x /epoch --label /optimizer/name --band /llc/llc_sd \
	  --title "LLC of the MLP 784-128-10 on MNIST, SGD vs NGD (seed 1)" --out $(RUNS)/demo/demo-llc \
	  $(RUNS)/demo/sgd.jsonl $(RUNS)/demo/ngd.jsonl 2>/dev/null
	@$(BIN)/report curves --metric /hessian/trace --x /epoch --label /optimizer/name \
	  --title "Hessian trace of the MLP 784-128-10 on MNIST, SGD vs NGD (seed 1)" --out $(RUNS)/demo/demo-trace \
	  $(RUNS)/demo/sgd.jsonl $(RUNS)/demo/ngd.jsonl 2>/dev/null
	@scripts/demo-summary.sh $(RUNS)/demo "$(DEMO_CHAINS)" "$(DEMO_DRAWS)"

test: deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace

bench: deps data
	$(CARGO) bench -p common

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# The checkpoint reader and model construction on mutated files, with no panic and no allocation
# over 1 GiB (common/tests/fuzz_checkpoint.rs); `make test` runs 20,000 of them. 1,000,000 take about
# 85 s of CPU time.
FUZZ_INPUTS ?= 1000000
FUZZ_SEED ?= 1
fuzz: deps
	FUZZ_INPUTS=$(FUZZ_INPUTS) FUZZ_SEED=$(FUZZ_SEED) $(CARGO) test --release -p common --test fuzz_checkpoint

check-cuda: deps
	$(CARGO) check --workspace --features train/cuda,hessian-trace/cuda,llc/cuda,wbic/cuda,switch/cuda

clean:
	$(CARGO) clean

# Optional cross-checks against the Python anchors, each skipped with a message when its module is
# missing: our λ̂ against devinterp's (several seeds, paper settings), and our checkpoints in PyTorch.
crosscheck: build data crosscheck-torch
	python3 scripts/crosscheck-llc.py --data-dir $(DATA)

# λ̂ of deep linear networks through the tools against Aoyagi's closed form (results/dln.md).
.PHONY: dln-check devinterp-cases
dln-check: build
	scripts/dln-check.sh $(BIN) $(RUNS)/dln-check

# devinterp's accuracy cases through the tools (results/devinterp-cases.md).
devinterp-cases: build
	scripts/devinterp-cases.sh $(BIN) $(RUNS)/devinterp-cases

# Optional: load our checkpoints into PyTorch (strict) and compare losses. Skipped without torch.
include mk/sweep.mk
include mk/paper.mk
include mk/beyond.mk
include mk/grokking.mk
include mk/grokking-devinterp.mk
include mk/grokking-nanda.mk
include mk/transformers.mk
include mk/icl.mk

crosscheck-torch: build
	@if ! python3 -c 'import torch, safetensors' 2>/dev/null; then echo "crosscheck-torch: torch or safetensors not importable; skipped"; exit 0; fi; \
	tmp=$$(mktemp -d); \
	$(BIN)/train --data-dir tests/fixtures/mnist-small --hidden 64,32 --activation tanh --epochs 1 --quiet --out $$tmp/mlp > $$tmp/mlp.jsonl; \
	$(BIN)/train --data-dir tests/fixtures/mnist-small --model lenet --epochs 1 --quiet --out $$tmp/lenet > $$tmp/lenet.jsonl; \
	python3 scripts/anchors/check_torch_load.py $$tmp/mlp.jsonl $$tmp/lenet.jsonl; rm -rf $$tmp

# The Slurm path of the sweeps on a real single-node cluster started here (needs root; CI runs it): paper-quick
# locally and through Slurm with one task cancelled and resubmitted, outputs compared (scripts/slurm-check.sh).
.PHONY: slurm-check
slurm-check: build data
	scripts/slurm-check.sh $(RUNS)/slurm-check

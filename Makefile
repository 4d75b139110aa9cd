# ngd-slt: train small networks with SGD or NGD and measure how degenerate their solutions are.
#
#   make demo    set up everything, train the demo run, print a summary      (newcomers start here)
#   make test    set up everything and run the whole test suite               (CI runs this)
#   make data    fetch and verify MNIST and Fashion-MNIST into data/
#   make build   build the tools in release mode
#   make bench   benchmarks of the hot paths, next to the compute floor (and PyTorch when installed)
#   make lint    cargo fmt --check and clippy -D warnings
#   make check-cuda  type-check the CUDA build (no GPU needed)
#   make crosscheck  compare with devinterp and PyTorch where they are installed (optional)
#   make paper-quick the paper's experiments at small size, in minutes; make paper: all, full size
#   make beyond-quick issue #8 (is NGD's higher λ̂ rounding noise?) small, in minutes; make beyond-table: full
#   make paper-table SCHEDULER=slurm  any sweep as Slurm job arrays; make sweep-status; make slurm-check (CI)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release
DATA ?= data
RUNS ?= runs

.PHONY: help deps data build demo test bench lint check-cuda clean crosscheck crosscheck-torch

help:
	@sed -n '3,13p' Makefile | sed 's/^# //'

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

# The demo: the MLP 784-128-10 on MNIST, SGD and the paper's NGD from the same initialisation (seed 1),
# 3 epochs each; checkpoints and run logs in runs/demo/.
demo: deps data build
	@rm -rf $(RUNS)/demo/sgd $(RUNS)/demo/ngd
	@mkdir -p $(RUNS)/demo
	$(BIN)/train --model mlp --hidden 128 --dataset mnist --data-dir $(DATA) --optimizer sgd \
	  --epochs 3 --seed 1 --out $(RUNS)/demo/sgd > $(RUNS)/demo/sgd.jsonl
	$(BIN)/train --model mlp --hidden 128 --dataset mnist --data-dir $(DATA) --optimizer ngd \
	  --epochs 3 --seed 1 --out $(RUNS)/demo/ngd > $(RUNS)/demo/ngd.jsonl
	@scripts/demo-summary.sh $(RUNS)/demo

test: deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace

bench: deps data
	$(CARGO) bench -p common

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

check-cuda: deps
	$(CARGO) check --workspace --features train/cuda,hessian-trace/cuda,llc/cuda,wbic/cuda,switch/cuda

clean:
	$(CARGO) clean

# Optional cross-checks against the Python anchors, each skipped with a message when its module is
# missing: our λ̂ against devinterp's (several seeds, paper settings), and our checkpoints in PyTorch.
crosscheck: build data crosscheck-torch
	python3 scripts/crosscheck-llc.py --data-dir $(DATA)

# Optional: load our checkpoints into PyTorch (strict) and compare losses. Skipped without torch.
include mk/sweep.mk
include mk/paper.mk
include mk/beyond.mk

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

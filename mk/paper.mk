# The paper's experiments (arXiv 2409.04913), reproduced by wiring the tools together.
#
#   make paper-table       MLPs (1,2 layers × 64,128,256) on MNIST, SGD vs NGD, 30 seeds, λ̂ at epochs 19-20
#   make paper-smoothing   MLP 2×256: λ̂ against NGD's α and ε, and against ngd-exact's damping
#   make paper-trace       Hessian trace and λ̂ at every epoch, SGD vs NGD (α 0.1), MNIST and Fashion-MNIST
#   make paper-switch      Fashion-MNIST MLP 2×256: SGD for 10 epochs, then SGD / NGD / 10× / 100× lr branches
#   make paper-cnn         the LeNet on MNIST and Fashion-MNIST, SGD vs NGD, λ̂ and trace
#   make paper             all of the above;  make paper-quick: the same pipeline, small, in minutes
#
# Every run is a file target written atomically (.tmp then mv), so an interrupted `make paper` resumes
# where it stopped and `make -j2 paper` runs independent runs in parallel. A failed run is reported by
# make (-k keeps going) and the tables list the seeds that are missing.

PAPER_RUNS ?= runs/paper
RESULTS ?= results
SEEDS ?= $(shell seq 1 30)
TABLE_ARCHS ?= mlp_1x64 mlp_1x128 mlp_1x256 mlp_2x64 mlp_2x128 mlp_2x256
TABLE_EPOCHS ?= 20
TABLE_LLC_EPOCHS ?= 19 20
TABLE_NGD_ALPHA ?= 0.01
# Empty: the whole training set; a number: the first N samples (paper-quick).
TRAIN_SAMPLES ?=
LLC_DRAWS ?= 1000
# The paper's LLC: ε 1e-4, γ 100, nβ = m/ln m with m = 128, minibatch 128, one chain per estimate.
LLC_FLAGS ?= --epsilon 1e-4 --gamma 100 --nbeta batch --batch-size 128 --chains 1
SMOOTH_ARCH ?= mlp_2x256
SMOOTH_EPOCHS ?= 30
ALPHAS ?= 0 1e-4 1e-3 1e-2 0.1 0.5 1 2 5 10 50
EPSILONS ?= 1e-1 1e-4 1e-7 1e-10 1e-13 1e-16 1e-19
DAMPINGS ?= 1e-4 1e-3 1e-2 0.1 0.5 1 2 5 10 50
TRACE_ALPHA ?= 0.1
TRACE_MNIST_EPOCHS ?= 20
TRACE_FASHION_EPOCHS ?= 40
SWITCH_AT ?= 10
SWITCH_EPOCHS ?= 20
CNN_SEEDS ?= 1 2 3
CNN_EPOCHS ?= 20
CNN_LLC_DRAWS ?= $(LLC_DRAWS)
CNN_LLC_EPOCHS ?= $(TABLE_LLC_EPOCHS)

samples_flag = $(if $(TRAIN_SAMPLES),--train-samples $(TRAIN_SAMPLES))
# grep pattern selecting the records of the given epochs, e.g. "epoch":(19|20),
epochs_re = "epoch":($(subst $(space),|,$(strip $(1)))),
space := $(subst ,, )
# The files among $(1) that exist when the recipe line runs (recipes are expanded before they run,
# so $(wildcard) would see the state before the runs were made).
existing = $$(ls -d $(1) 2>/dev/null || true)
comma := ,
# Runs $(1), reporting failures without stopping (the summaries list what is missing) and the wall time.
timed = @start=$$(date +%s); $(1) || echo "make: some of the $(2) failed (see above); summarising the rest" >&2; \
	echo "make: $(2) took $$(( $$(date +%s) - start )) s$(if $(filter slurm,$(SCHEDULER)), to submit)" >&2

.PHONY: paper paper-quick paper-table paper-smoothing paper-trace paper-switch paper-cnn \
	paper-table-runs paper-smoothing-runs paper-trace-runs paper-cnn-runs \
	paper-table-report paper-smoothing-report paper-trace-report paper-switch-report paper-cnn-report

paper: paper-table paper-smoothing paper-trace paper-switch paper-cnn

# ---- 1. the table ------------------------------------------------------------------------------
TABLE_RUNS := $(foreach a,$(TABLE_ARCHS),$(foreach o,sgd ngd,$(foreach s,$(SEEDS),$(PAPER_RUNS)/table/$(a)/$(o)/s$(s).jsonl)))

# $(PAPER_RUNS)/table/<arch>/<opt>/s<seed>.jsonl: train, keep the records of the LLC epochs, estimate λ̂.
$(PAPER_RUNS)/table/%.jsonl:
	@mkdir -p $(@D)
	@set -- $(subst /, ,$*); arch=$$1; opt=$$2; seed=$${3#s}; dir=$(@D)/s$$seed; \
	ngd=$$([ "$$opt" = ngd ] && echo "--ngd-alpha $(TABLE_NGD_ALPHA)" || true); \
	$(BIN)/train --model $$arch --optimizer $$opt $$ngd --dataset mnist --data-dir $(DATA) --epochs $(TABLE_EPOCHS) \
	  --seed $$seed $(samples_flag) --out $$dir --overwrite --run $$arch-$$opt-s$$seed --quiet \
	| grep -E '$(call epochs_re,$(TABLE_LLC_EPOCHS))' \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(LLC_DRAWS) --seed $$seed --data-dir $(DATA) --quiet > $@.tmp; \
	find $$dir -name 'epoch-*' ! -name 'epoch-$(shell printf %04d $(lastword $(TABLE_EPOCHS))).*' -delete; \
	mv $@.tmp $@

paper-table-runs: $(TABLE_RUNS)

paper-table: build data
	$(call sweep,$(PAPER_RUNS)/sweep,paper-table,paper-table-runs,paper-table-report,$(TABLE_RUNS))

paper-table-report:
	$(BIN)/report table --metric /llc/llc --epochs $(subst $(space),$(comma),$(strip $(TABLE_LLC_EPOCHS))) \
	  --group /model/name --label /optimizer/name --baseline sgd --paper results/paper-values.json \
	  --title "LLC at epochs $(TABLE_LLC_EPOCHS): SGD vs NGD (MNIST)" --out $(RESULTS)/paper-table \
	  $(call existing,$(TABLE_RUNS)) < /dev/null > /dev/null
	$(BIN)/report curves --metric /test_loss --x /epoch --label /model/name --label /optimizer/name \
	  --title "test loss" --out $(RESULTS)/paper-table-test-loss $(call existing,$(TABLE_RUNS)) < /dev/null
	@cat $(RESULTS)/paper-table.md

# The table's run records (about 5 kB each, no checkpoints) are kept in git under $(PAPER_RECORDS), so that a
# fresh clone rebuilds the table and its figures without training (make paper-table-restore paper-table-report),
# or continues a table that stopped part-way:
#   make paper-table-save      copies them from $(PAPER_RUNS)/table into $(PAPER_RECORDS)/table
#   make paper-table-restore   copies them back, so make (local or Slurm) counts those runs as done
PAPER_RECORDS ?= $(RESULTS)/paper-records
.PHONY: paper-table-save paper-table-restore
paper-table-save:
	@mkdir -p $(PAPER_RECORDS)/table
	@cd $(PAPER_RUNS)/table && find . -name 's*.jsonl' -print0 \
	  | xargs -0 -I{} sh -c 'mkdir -p "$(abspath $(PAPER_RECORDS))/table/$$(dirname {})" && cp {} "$(abspath $(PAPER_RECORDS))/table/{}"'
	@echo "make: $$(find $(PAPER_RECORDS)/table -name 's*.jsonl' | wc -l) run records saved in $(PAPER_RECORDS)/table"
paper-table-restore:
	@mkdir -p $(PAPER_RUNS)/table
	@cp -R $(PAPER_RECORDS)/table/. $(PAPER_RUNS)/table/
	@echo "make: $$(find $(PAPER_RUNS)/table -name 's*.jsonl' | wc -l) run records restored into $(PAPER_RUNS)/table"

# ---- 2. smoothing sweeps --------------------------------------------------------------------------
SMOOTH_RUNS := $(PAPER_RUNS)/smoothing/sgd.jsonl \
	$(foreach a,$(ALPHAS),$(PAPER_RUNS)/smoothing/alpha-$(a).jsonl) \
	$(foreach e,$(EPSILONS),$(PAPER_RUNS)/smoothing/epsilon-$(e).jsonl) \
	$(foreach d,$(DAMPINGS),$(PAPER_RUNS)/smoothing/damping-$(d).jsonl)

$(PAPER_RUNS)/smoothing/%.jsonl:
	@mkdir -p $(@D)
	@stem=$*; case $$stem in \
	  sgd) opt="--optimizer sgd";; \
	  alpha-*) opt="--optimizer ngd --ngd-alpha $${stem#alpha-}";; \
	  epsilon-*) opt="--optimizer ngd --ngd-alpha 0 --ngd-epsilon $${stem#epsilon-}";; \
	  damping-*) opt="--optimizer ngd-exact --fisher empirical --no-preserve-norm --damping-relative $${stem#damping-}";; \
	esac; dir=$(@D)/$$stem; \
	$(BIN)/train --model $(SMOOTH_ARCH) $$opt --dataset mnist --data-dir $(DATA) --epochs $(SMOOTH_EPOCHS) --seed 1 \
	  $(samples_flag) --out $$dir --overwrite --run smoothing-$* --quiet \
	| grep -E '$(call epochs_re,$(SMOOTH_EPOCHS))' \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(LLC_DRAWS) --seed 1 --data-dir $(DATA) --quiet > $@.tmp; \
	find $$dir -name 'epoch-*' ! -name 'epoch-$(shell printf %04d $(SMOOTH_EPOCHS)).*' -delete; \
	mv $@.tmp $@

paper-smoothing-runs: $(SMOOTH_RUNS)

paper-smoothing: build data
	$(call sweep,$(PAPER_RUNS)/sweep,paper-smoothing,paper-smoothing-runs,paper-smoothing-report,$(SMOOTH_RUNS))

paper-smoothing-report:
	$(BIN)/report curves --metric /llc/llc --x /optimizer/alpha --label /optimizer/name --log-x \
	  --title "LLC against NGD's alpha (MLP $(SMOOTH_ARCH), epoch $(SMOOTH_EPOCHS))" --out $(RESULTS)/paper-smoothing-alpha \
	  $(call existing,$(PAPER_RUNS)/smoothing/alpha-*.jsonl) < /dev/null
	$(BIN)/report curves --metric /llc/llc --x /optimizer/epsilon --label /optimizer/name --log-x \
	  --title "LLC against NGD's epsilon (alpha 0)" --out $(RESULTS)/paper-smoothing-epsilon \
	  $(call existing,$(PAPER_RUNS)/smoothing/epsilon-*.jsonl) < /dev/null
	$(BIN)/report curves --metric /llc/llc --x /optimizer/damping_value --label /optimizer/name --log-x \
	  --title "LLC against ngd-exact's relative damping" --out $(RESULTS)/paper-smoothing-damping \
	  $(call existing,$(PAPER_RUNS)/smoothing/damping-*.jsonl) < /dev/null
	$(BIN)/report table --metric /llc/llc --group /model/name --label /run --baseline smoothing-sgd \
	  --title "LLC at the last epoch, every smoothing setting" --out $(RESULTS)/paper-smoothing $(call existing,$(SMOOTH_RUNS)) < /dev/null > /dev/null

# ---- 3. trace and λ̂ at every epoch ---------------------------------------------------------------
TRACE_RUNS := $(foreach o,sgd ngd,$(PAPER_RUNS)/trace/mnist-mlp_2x256-$(o).jsonl $(PAPER_RUNS)/trace/fashion-mnist-mlp_2x128-$(o).jsonl)

$(PAPER_RUNS)/trace/%.jsonl:
	@mkdir -p $(@D)
	@stem=$*; case $$stem in mnist-*) ds=mnist; rest=$${stem#mnist-}; ep=$(TRACE_MNIST_EPOCHS);; \
	  fashion-mnist-*) ds=fashion-mnist; rest=$${stem#fashion-mnist-}; ep=$(TRACE_FASHION_EPOCHS);; esac; \
	arch=$${rest%-*}; opt=$${rest##*-}; \
	ngd=$$([ "$$opt" = ngd ] && echo "--ngd-alpha $(TRACE_ALPHA)" || true); \
	$(BIN)/train --model $$arch --optimizer $$opt $$ngd --dataset $$ds --data-dir $(DATA) --epochs $$ep --seed 1 \
	  $(samples_flag) --out $(@D)/$* --overwrite --run trace-$* --quiet \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(LLC_DRAWS) --seed 1 --data-dir $(DATA) --quiet \
	| $(BIN)/hessian-trace --data-dir $(DATA) --quiet > $@.tmp; \
	mv $@.tmp $@

paper-trace-runs: $(TRACE_RUNS)

paper-trace: build data
	$(call sweep,$(PAPER_RUNS)/sweep,paper-trace,paper-trace-runs,paper-trace-report,$(TRACE_RUNS))

paper-trace-report:
	for m in llc/llc:llc hessian/trace:hessian-trace test_loss:test-loss train_loss:train-loss; do \
	  $(BIN)/report curves --metric /$${m%%:*} --x /epoch --label /dataset --label /optimizer/name \
	    --out $(RESULTS)/paper-trace-$${m##*:} $(call existing,$(TRACE_RUNS)) < /dev/null; \
	done

# ---- 4. switching optimisers ---------------------------------------------------------------------
SWITCH_DIR := $(PAPER_RUNS)/switch

$(SWITCH_DIR)/source.jsonl:
	@mkdir -p $(@D)
	$(BIN)/train --model mlp_2x256 --dataset fashion-mnist --data-dir $(DATA) --epochs $(SWITCH_AT) --seed 1 \
	  $(samples_flag) --out $(SWITCH_DIR)/source --overwrite --run source-sgd --quiet \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(LLC_DRAWS) --seed 1 --data-dir $(DATA) --quiet > $@.tmp
	mv $@.tmp $@

# A branch that diverges (the 100× learning rate can) is reported on stderr and left out; the others
# are kept, so the file is written whatever the branches do.
$(SWITCH_DIR)/branches.jsonl: $(SWITCH_DIR)/source.jsonl
	{ $(BIN)/switch --from $(SWITCH_DIR)/source/epoch-$(shell printf %04d $(SWITCH_AT)).safetensors \
	  --epochs $(SWITCH_EPOCHS) --data-dir $(DATA) --jobs 2 --out $(SWITCH_DIR)/branches --overwrite --quiet \
	  --branch sgd --branch ngd:ngd-alpha=$(TRACE_ALPHA) --branch sgd:lr=0.1 --branch sgd:lr=1 \
	  || echo "make: a switch branch failed (see above); it is left out" >&2; } \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(LLC_DRAWS) --seed 1 --data-dir $(DATA) --quiet > $@.tmp
	mv $@.tmp $@

paper-switch: build data
	$(call sweep,$(PAPER_RUNS)/sweep,paper-switch,$(SWITCH_DIR)/branches.jsonl,paper-switch-report,$(SWITCH_DIR)/source.jsonl,$(SWITCH_DIR)/branches.jsonl)

paper-switch-report:
	$(BIN)/report curves --metric /llc/llc --x /epoch --label /run \
	  --title "LLC: SGD to epoch $(SWITCH_AT), then branches" --out $(RESULTS)/paper-switch-llc \
	  $(SWITCH_DIR)/source.jsonl $(SWITCH_DIR)/branches.jsonl
	$(BIN)/report curves --metric /test_loss --x /epoch --label /run \
	  --title "test loss: SGD to epoch $(SWITCH_AT), then branches" --out $(RESULTS)/paper-switch-test-loss \
	  $(SWITCH_DIR)/source.jsonl $(SWITCH_DIR)/branches.jsonl

# ---- 5. the LeNet ----------------------------------------------------------------------------------
CNN_RUNS := $(foreach d,mnist fashion-mnist,$(foreach o,sgd ngd,$(foreach s,$(CNN_SEEDS),$(PAPER_RUNS)/cnn/$(d)/$(o)/s$(s).jsonl)))

$(PAPER_RUNS)/cnn/%.jsonl:
	@mkdir -p $(@D)
	@set -- $(subst /, ,$*); ds=$$1; opt=$$2; seed=$${3#s}; dir=$(@D)/s$$seed; \
	ngd=$$([ "$$opt" = ngd ] && echo "--ngd-alpha $(TABLE_NGD_ALPHA)" || true); \
	$(BIN)/train --model lenet --optimizer $$opt $$ngd --dataset $$ds --data-dir $(DATA) --epochs $(CNN_EPOCHS) \
	  --seed $$seed $(samples_flag) --out $$dir --overwrite --run lenet-$$ds-$$opt-s$$seed --quiet \
	| grep -E '$(call epochs_re,$(CNN_LLC_EPOCHS))' \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(CNN_LLC_DRAWS) --seed $$seed --data-dir $(DATA) --quiet \
	| $(BIN)/hessian-trace --data-dir $(DATA) --quiet > $@.tmp; \
	mv $@.tmp $@

paper-cnn-runs: $(CNN_RUNS)

paper-cnn: build data
	$(call sweep,$(PAPER_RUNS)/sweep,paper-cnn,paper-cnn-runs,paper-cnn-report,$(CNN_RUNS))

paper-cnn-report:
	$(BIN)/report table --metric /llc/llc --epochs $(subst $(space),$(comma),$(strip $(CNN_LLC_EPOCHS))) \
	  --group /dataset --label /optimizer/name --baseline sgd --title "LeNet: LLC, SGD vs NGD" \
	  --out $(RESULTS)/paper-cnn-llc $(call existing,$(CNN_RUNS)) < /dev/null > /dev/null
	$(BIN)/report table --metric /hessian/trace --epochs $(subst $(space),$(comma),$(strip $(CNN_LLC_EPOCHS))) \
	  --group /dataset --label /optimizer/name --baseline sgd --title "LeNet: Hessian trace, SGD vs NGD" \
	  --out $(RESULTS)/paper-cnn-trace $(call existing,$(CNN_RUNS)) < /dev/null > /dev/null
	@cat $(RESULTS)/paper-cnn-llc.md $(RESULTS)/paper-cnn-trace.md

# ---- the quick version ---------------------------------------------------------------------------
PAPER_QUICK_RUNS ?= runs/quick
PAPER_QUICK_RESULTS ?= results/quick
PAPER_QUICK_VARS = PAPER_RUNS=$(PAPER_QUICK_RUNS) RESULTS=$(PAPER_QUICK_RESULTS) SEEDS="1 2 3" \
	  TABLE_ARCHS="mlp_1x64 mlp_2x64" TABLE_EPOCHS=3 TABLE_LLC_EPOCHS="2 3" TRAIN_SAMPLES=6000 LLC_DRAWS=200 \
	  SMOOTH_ARCH=mlp_1x64 SMOOTH_EPOCHS=3 ALPHAS="0 0.01 1 10" EPSILONS="1e-4 1e-10" DAMPINGS="0.01 1" \
	  TRACE_MNIST_EPOCHS=4 TRACE_FASHION_EPOCHS=4 SWITCH_AT=2 SWITCH_EPOCHS=4 \
	  CNN_SEEDS="1 2" CNN_EPOCHS=2 CNN_LLC_EPOCHS=2 CNN_LLC_DRAWS=100

paper-quick: build data
	$(call timed,$(MAKE) -k paper $(PAPER_QUICK_VARS),paper-quick)

# The quick sweeps' status (make paper-quick SCHEDULER=slurm, then this).
.PHONY: paper-quick-status
paper-quick-status:
	@scripts/sweep status $(PAPER_QUICK_RUNS)/sweep

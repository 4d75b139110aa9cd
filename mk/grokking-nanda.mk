# Grokking on the literature's transformer (Nanda et al. 2023, "Progress measures for grokking via mechanistic
# interpretability": one layer, no LayerNorm, no biases, ReLU MLP), tracked by λ̂ (issue #16; results/grokking-nanda.md).
# transformer-quick (mk/grokking.mk) trains a pre-LayerNorm transformer, where λ̂ does not fall at the transition;
# this is the same data, optimiser and sampler without the LayerNorms and biases, over several seeds.
#
#   make grokking-nanda        modular addition mod GN_P (train fraction GN_TRAIN_FRACTION), for each seed in
#                              GN_SEEDS: train with AdamW (weight decay 1) for GN_EPOCHS epochs with every epoch's
#                              train and test accuracy, and λ̂ of every GN_LLC_EVERY-th checkpoint streamed through
#                              `train | llc` (transformer-quick's sampler, GROK_LLC_FLAGS); records into
#                              $(GN_RESULTS)/seed-S/ and the figures redrawn
#   make grokking-nanda-plot   only redraw the figures from the committed records
#   make grokking-nanda-check  λ̂ of seed 1's checkpoints every GN_CHECK_EVERY epochs with two other samplers
#                              (GN_CHECK_FLAGS_1, _2): does the shape depend on the sampler's settings? And
#                              the Hessian trace of the same checkpoints (Hutch++, GN_TRACE_FLAGS), to compare
#                              λ̂ with nβ·tr H/(2γ), its value if the loss were quadratic out to the chains

#
# The same seeds give the same records (train and llc are deterministic with one BLAS thread).

GN_RUNS ?= $(RUNS)/grokking-nanda
GN_RESULTS ?= $(RESULTS)/grokking-nanda
GN_P ?= 41
GN_TRAIN_FRACTION ?= 0.5
GN_DATA_SEED ?= 1
GN_SEEDS ?= 1 2 3
GN_D_MODEL ?= 64
GN_HEADS ?= 4
GN_MLP ?= 256
GN_EPOCHS ?= 600
GN_LLC_EVERY ?= 10
GN_TRAIN_FLAGS ?= $(GROK_TRAIN_FLAGS)
GN_LLC_FLAGS ?= $(GROK_LLC_FLAGS)

GN_MODEL_JSON = {"input": [3], "layers": [\
{"type": "embedding", "num": $(shell echo $$(($(GN_P) + 1))), "dim": $(GN_D_MODEL)}, {"type": "positional"},\
{"type": "residual", "layers": [{"type": "attention", "heads": $(GN_HEADS), "causal": true, "bias": false}]},\
{"type": "residual", "layers": [{"type": "linear", "out": $(GN_MLP), "bias": false}, {"type": "relu"}, {"type": "linear", "out": $(GN_D_MODEL), "bias": false}]},\
{"type": "last"}, {"type": "linear", "out": $(GN_P), "bias": false}], "loss": "cross_entropy"}

.PHONY: grokking-nanda grokking-nanda-plot grokking-nanda-check

grokking-nanda: build
	@rm -rf $(GN_RUNS) && mkdir -p $(GN_RUNS) $(GN_RESULTS)
	@echo '$(GN_MODEL_JSON)' > $(GN_RUNS)/model.json
	$(BIN)/datagen modular --p $(GN_P) --op add --train-fraction $(GN_TRAIN_FRACTION) --seed $(GN_DATA_SEED) \
	  --out $(GN_RUNS)/add.safetensors > $(GN_RUNS)/datagen.json
	cp $(GN_RUNS)/model.json $(GN_RUNS)/datagen.json $(GN_RESULTS)/
	@set -e; for s in $(GN_SEEDS); do \
	  mkdir -p $(GN_RUNS)/seed-$$s $(GN_RESULTS)/seed-$$s; start=$$(date +%s); \
	  $(BIN)/train --model $(GN_RUNS)/model.json --data $(GN_RUNS)/add.safetensors $(GN_TRAIN_FLAGS) \
	    --epochs $(GN_EPOCHS) --seed $$s --eval-train --run seed-$$s --quiet --out $(GN_RUNS)/seed-$$s/run \
	  | tee $(GN_RUNS)/seed-$$s/train.jsonl \
	  | { grep -E '$(call epochs_re,$(shell seq $(GN_LLC_EVERY) $(GN_LLC_EVERY) $(GN_EPOCHS)))' || true; } \
	  | $(BIN)/llc $(GN_LLC_FLAGS) --quiet > $(GN_RUNS)/seed-$$s/llc.jsonl; \
	  echo "make: grokking-nanda: seed $$s: train | llc took $$(( $$(date +%s) - start )) s" >&2; \
	  cp $(GN_RUNS)/seed-$$s/train.jsonl $(GN_RUNS)/seed-$$s/llc.jsonl $(GN_RESULTS)/seed-$$s/; \
	done
	@$(MAKE) --no-print-directory grokking-nanda-plot

GN_TITLE ?= Modular addition mod $(GN_P), one-layer transformer without LayerNorm, AdamW (weight decay 1)

grokking-nanda-plot: build
	$(BIN)/report curves --metric /test_acc --label /run --ylabel "test accuracy (%)" \
	  --title "Test accuracy (every epoch)" \
	  --out $(GN_RESULTS)/accuracy $(foreach s,$(GN_SEEDS),$(GN_RESULTS)/seed-$(s)/train.jsonl)
	$(BIN)/report curves --metric /llc/llc --band /llc/llc_sd --label /run \
	  --title "LLC of the checkpoints (every $(GN_LLC_EVERY) epochs; ε 3e-5, γ 1000, nβ = n/ln n)" \
	  --out $(GN_RESULTS)/llc $(foreach s,$(GN_SEEDS),$(GN_RESULTS)/seed-$(s)/llc.jsonl)
	$(BIN)/report stack --title "$(GN_TITLE)" --out $(GN_RESULTS)/grokking \
	  $(GN_RESULTS)/accuracy.json $(GN_RESULTS)/llc.json

# Two other samplers on seed 1's checkpoints: a 3× larger step with a 10× weaker localisation, and a 10× larger
# step with a 33× weaker one (its MALA acceptance is low: a check of the shape, not a recommended setting).
GN_CHECK_EVERY ?= 50
GN_CHECK_FLAGS_1 ?= --epsilon 1e-4 --gamma 100 --nbeta dataset --batch-size 128 --chains 2 --burn-in 200 --draws 500 --seed 1
GN_CHECK_FLAGS_2 ?= --epsilon 3e-4 --gamma 30 --nbeta dataset --batch-size 128 --chains 2 --burn-in 200 --draws 500 --seed 1
GN_TRACE_FLAGS ?= --full --hutchpp --probes 60 --seed 1

grokking-nanda-check: build
	@test -s $(GN_RUNS)/seed-1/train.jsonl || { echo "make: run make grokking-nanda first (no $(GN_RUNS)/seed-1/train.jsonl)" >&2; exit 1; }
	grep -E '$(call epochs_re,$(shell seq $(GN_CHECK_EVERY) $(GN_CHECK_EVERY) $(GN_EPOCHS)))' $(GN_RUNS)/seed-1/train.jsonl \
	| $(BIN)/llc $(GN_CHECK_FLAGS_1) --quiet > $(GN_RUNS)/seed-1/llc-check-1.jsonl.tmp
	mv $(GN_RUNS)/seed-1/llc-check-1.jsonl.tmp $(GN_RUNS)/seed-1/llc-check-1.jsonl
	grep -E '$(call epochs_re,$(shell seq $(GN_CHECK_EVERY) $(GN_CHECK_EVERY) $(GN_EPOCHS)))' $(GN_RUNS)/seed-1/train.jsonl \
	| $(BIN)/llc $(GN_CHECK_FLAGS_2) --quiet > $(GN_RUNS)/seed-1/llc-check-2.jsonl.tmp
	mv $(GN_RUNS)/seed-1/llc-check-2.jsonl.tmp $(GN_RUNS)/seed-1/llc-check-2.jsonl
	cp $(GN_RUNS)/seed-1/llc-check-1.jsonl $(GN_RUNS)/seed-1/llc-check-2.jsonl $(GN_RESULTS)/seed-1/
	grep -E '$(call epochs_re,$(shell seq $(GN_CHECK_EVERY) $(GN_CHECK_EVERY) $(GN_EPOCHS)))' $(GN_RUNS)/seed-1/train.jsonl \
	| $(BIN)/hessian-trace $(GN_TRACE_FLAGS) --quiet > $(GN_RUNS)/seed-1/trace-check.jsonl.tmp
	mv $(GN_RUNS)/seed-1/trace-check.jsonl.tmp $(GN_RUNS)/seed-1/trace-check.jsonl
	cp $(GN_RUNS)/seed-1/trace-check.jsonl $(GN_RESULTS)/seed-1/

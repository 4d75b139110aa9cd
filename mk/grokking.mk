# Grokking reproduced and tracked by λ̂ (issue #16), small enough for minutes on a CPU.
#
#   make transformer-quick       modular addition mod GROK_P: datagen, then a one-layer pre-LayerNorm transformer
#                                trained with AdamW (weight decay 1) for GROK_EPOCHS epochs, every epoch's train
#                                and test accuracy (--eval-train), and λ̂ of every GROK_LLC_EVERY-th epoch's
#                                checkpoint streamed through `train | llc`; the records are copied into
#                                $(GROK_RESULTS)/ and the figures redrawn (results/grokking.md describes them)
#   make transformer-quick-plot  only redraw the figures from the committed records (no training)
#   make transformer-quick-check λ̂ of a few of its checkpoints again with longer chains and a smaller step
#
# The same seeds give the same records (train and llc are deterministic with one BLAS thread).

GROK_RUNS ?= $(RUNS)/grokking
GROK_RESULTS ?= $(RESULTS)/grokking
GROK_P ?= 41
GROK_TRAIN_FRACTION ?= 0.4
GROK_DATA_SEED ?= 1
GROK_SEED ?= 1
GROK_D_MODEL ?= 64
GROK_HEADS ?= 4
GROK_MLP ?= 256
GROK_EPOCHS ?= 600
GROK_TRAIN_FLAGS ?= --optimizer adamw --lr 3e-3 --weight-decay 1 --betas 0.9,0.98 --batch-size 128
GROK_LLC_EVERY ?= 20
# λ̂: SGLD with ε 3e-5, γ 1000, nβ = n/ln n (n = the training set), minibatch 128, 2 chains, 200 steps of
# burn-in then 300 draws (the chains' distance from w* and loss are flat over the draws; results/grokking.md).
GROK_LLC_FLAGS ?= --epsilon 3e-5 --gamma 1000 --nbeta dataset --batch-size 128 --chains 2 --burn-in 200 --draws 300 --seed 1

GROK_MODEL_JSON = {"input": [3], "layers": [\
{"type": "embedding", "num": $(shell echo $$(($(GROK_P) + 1))), "dim": $(GROK_D_MODEL)}, {"type": "positional"},\
{"type": "residual", "layers": [{"type": "layernorm"}, {"type": "attention", "heads": $(GROK_HEADS), "causal": true}]},\
{"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": $(GROK_MLP)}, {"type": "gelu"}, {"type": "linear", "out": $(GROK_D_MODEL)}]},\
{"type": "layernorm"}, {"type": "last"}, {"type": "linear", "out": $(GROK_P)}], "loss": "cross_entropy"}

.PHONY: transformer-quick transformer-quick-plot

transformer-quick: build
	@rm -rf $(GROK_RUNS) && mkdir -p $(GROK_RUNS) $(GROK_RESULTS)
	@echo '$(GROK_MODEL_JSON)' > $(GROK_RUNS)/model.json
	$(BIN)/datagen modular --p $(GROK_P) --op add --train-fraction $(GROK_TRAIN_FRACTION) --seed $(GROK_DATA_SEED) \
	  --out $(GROK_RUNS)/add.safetensors > $(GROK_RUNS)/datagen.json
	@start=$$(date +%s); \
	$(BIN)/train --model $(GROK_RUNS)/model.json --data $(GROK_RUNS)/add.safetensors $(GROK_TRAIN_FLAGS) \
	  --epochs $(GROK_EPOCHS) --seed $(GROK_SEED) --eval-train --run grokking --quiet --out $(GROK_RUNS)/run \
	| tee $(GROK_RUNS)/train.jsonl \
	| { grep -E '$(call epochs_re,$(shell seq $(GROK_LLC_EVERY) $(GROK_LLC_EVERY) $(GROK_EPOCHS)))' || true; } \
	| $(BIN)/llc $(GROK_LLC_FLAGS) --quiet > $(GROK_RUNS)/llc.jsonl; \
	echo "make: transformer-quick: train | llc took $$(( $$(date +%s) - start )) s" >&2
	cp $(GROK_RUNS)/model.json $(GROK_RUNS)/datagen.json $(GROK_RUNS)/train.jsonl $(GROK_RUNS)/llc.jsonl $(GROK_RESULTS)/
	@$(MAKE) --no-print-directory transformer-quick-plot

GROK_TITLE ?= Modular addition mod $(GROK_P), one-layer transformer, AdamW (weight decay 1), seed $(GROK_SEED)

transformer-quick-plot: build
	$(BIN)/report curves --metric /train_acc --metric /test_acc --label /run --ylabel "accuracy (%)" \
	  --title "Training and test accuracy (every epoch)" --out $(GROK_RESULTS)/accuracy $(GROK_RESULTS)/train.jsonl
	$(BIN)/report curves --metric /llc/llc --band /llc/llc_sd --label /run \
	  --title "LLC of the checkpoints (every $(GROK_LLC_EVERY) epochs)" --out $(GROK_RESULTS)/llc $(GROK_RESULTS)/llc.jsonl
	$(BIN)/report stack --title "$(GROK_TITLE)" --out $(GROK_RESULTS)/grokking \
	  $(GROK_RESULTS)/accuracy.json $(GROK_RESULTS)/llc.json

# The chains' check: λ̂ of a few checkpoints of the transformer-quick run again with a 3× smaller step, 3× the
# burn-in and twice the draws, to see whether the shape of λ̂ over training depends on the sampler's settings.
GROK_CHECK_EPOCHS ?= 100 280 320 380 440 500
GROK_CHECK_LLC_FLAGS ?= --epsilon 1e-5 --gamma 1000 --nbeta dataset --batch-size 128 --chains 2 --burn-in 600 --draws 600 --seed 1

.PHONY: transformer-quick-check
transformer-quick-check:
	@test -s $(GROK_RUNS)/train.jsonl || { echo "make: run make transformer-quick first (no $(GROK_RUNS)/train.jsonl)" >&2; exit 1; }
	grep -E '$(call epochs_re,$(GROK_CHECK_EPOCHS))' $(GROK_RUNS)/train.jsonl \
	| $(BIN)/llc $(GROK_CHECK_LLC_FLAGS) --quiet > $(GROK_RUNS)/llc-check.jsonl.tmp
	mv $(GROK_RUNS)/llc-check.jsonl.tmp $(GROK_RUNS)/llc-check.jsonl
	cp $(GROK_RUNS)/llc-check.jsonl $(GROK_RESULTS)/

# devinterp's grokking example reproduced with our tools (issue #16; results/grokking-devinterp.md).
#
#   make grokking-devinterp       modular addition mod 53, a random 40 % train split; an embedding (dim 12) of
#                                 [a, b, =], flattened, a hidden GELU layer of 48 and a bias-free linear head of 53;
#                                 torch.optim.Adam (lr 5e-3, L2 weight decay 2e-4) at batch 128 for 25,002 steps
#                                 (2,778 epochs of 9 steps), a checkpoint every 250 steps (100 of them) with train
#                                 and test accuracy, and λ̂ of each with devinterp's example's SGLD settings
#                                 (ε 3e-3, γ 5, nβ 2, 500 draws, no burn-in, batch 128, 2 chains), streamed
#                                 through `train | llc`; records copied into $(GD_RESULTS)/, figure redrawn
#   make grokking-devinterp-plot  only redraw the figure from the committed records
#   make grokking-devinterp-long  the same run continued to 100,008 steps (11,112 epochs), λ̂ every 1,000 steps
#                                 (here the test accuracy jumps at about 26,000 steps, just past devinterp's 25,000)
#   make grokking-devinterp-long-plot  only redraw its figure
#
# The same seeds give the same records (train and llc are deterministic with one BLAS thread).

GD_RUNS ?= $(RUNS)/grokking-devinterp
GD_RESULTS ?= $(RESULTS)/grokking-devinterp
GD_P ?= 53
GD_TRAIN_FRACTION ?= 0.4
GD_DATA_SEED ?= 1
GD_SEED ?= 1
# 25,000 steps in devinterp's example; 9 steps an epoch here (1,123 samples, batch 128), so 2,778 epochs.
GD_EPOCHS ?= 2778
GD_SAVE_EVERY ?= 250
# The records that go to llc: the --save-every ones (steps that are multiples of 250), not the per-epoch ones (an
# epoch's end that falls on a multiple of 250 writes one record, an epoch record, which this keeps).
GD_STEP_RE ?= "step":[0-9]*(250|500|750|000),
GD_TITLE ?= devinterp's grokking example: mod 53, embed 12, GELU 48, Adam (wd 2e-4), seed $(GD_SEED)
GD_EVERY_TEXT ?= every 250 steps
GD_TRAIN_FLAGS ?= --optimizer adam --lr 5e-3 --weight-decay 2e-4 --betas 0.9,0.999 --batch-size 128
GD_LLC_FLAGS ?= --epsilon 3e-3 --gamma 5 --nbeta 2 --batch-size 128 --chains 2 --burn-in 0 --draws 500 --seed 1

GD_MODEL_JSON = {"input": [3], "layers": [\
{"type": "embedding", "num": $(shell echo $$(($(GD_P) + 1))), "dim": 12}, {"type": "flatten"},\
{"type": "linear", "out": 48}, {"type": "gelu"}, {"type": "linear", "out": $(GD_P), "bias": false}], "loss": "cross_entropy"}

.PHONY: grokking-devinterp grokking-devinterp-plot

grokking-devinterp: build
	@rm -rf $(GD_RUNS) && mkdir -p $(GD_RUNS) $(GD_RESULTS)
	@echo '$(GD_MODEL_JSON)' > $(GD_RUNS)/model.json
	$(BIN)/datagen modular --p $(GD_P) --op add --train-fraction $(GD_TRAIN_FRACTION) --seed $(GD_DATA_SEED) \
	  --out $(GD_RUNS)/add.safetensors > $(GD_RUNS)/datagen.json
	@start=$$(date +%s); \
	$(BIN)/train --model $(GD_RUNS)/model.json --data $(GD_RUNS)/add.safetensors $(GD_TRAIN_FLAGS) \
	  --epochs $(GD_EPOCHS) --save-every $(GD_SAVE_EVERY) --seed $(GD_SEED) --eval-train --run grokking-devinterp \
	  --quiet --out $(GD_RUNS)/run \
	| tee $(GD_RUNS)/train.jsonl \
	| { grep -E '$(GD_STEP_RE)' || true; } \
	| $(BIN)/llc $(GD_LLC_FLAGS) --trace-out $(GD_RUNS)/llc-trace.jsonl --quiet > $(GD_RUNS)/llc.jsonl; \
	echo "make: grokking-devinterp: train | llc took $$(( $$(date +%s) - start )) s" >&2
	grep -E '$(GD_STEP_RE)' $(GD_RUNS)/train.jsonl > $(GD_RUNS)/train-steps.jsonl
	cp $(GD_RUNS)/model.json $(GD_RUNS)/datagen.json $(GD_RUNS)/train-steps.jsonl $(GD_RUNS)/llc.jsonl $(GD_RESULTS)/
	@$(MAKE) --no-print-directory grokking-devinterp-plot

grokking-devinterp-plot: build
	$(BIN)/report curves --x /step --metric /train_acc --metric /test_acc --label /run --ylabel "accuracy (%)" \
	  --title "Training and test accuracy ($(GD_EVERY_TEXT))" --out $(GD_RESULTS)/accuracy $(GD_RESULTS)/train-steps.jsonl
	$(BIN)/report curves --x /step --metric /llc/llc --band /llc/llc_sd --label /run \
	  --title "LLC of the checkpoints ($(GD_EVERY_TEXT); ε 3e-3, γ 5, nβ 2, 500 draws)" --out $(GD_RESULTS)/llc $(GD_RESULTS)/llc.jsonl
	$(BIN)/report stack --title "$(GD_TITLE)" \
	  --out $(GD_RESULTS)/grokking $(GD_RESULTS)/accuracy.json $(GD_RESULTS)/llc.json

GD_LONG_VARS = GD_EPOCHS=11112 GD_SAVE_EVERY=1000 'GD_STEP_RE="step":[0-9]*000,' GD_EVERY_TEXT='every 1,000 steps' \
  GD_RUNS=$(RUNS)/grokking-devinterp-long GD_RESULTS=$(RESULTS)/grokking-devinterp-long \
  "GD_TITLE=devinterp's grokking example continued to 100,008 steps, seed $(GD_SEED)"

.PHONY: grokking-devinterp-long grokking-devinterp-long-plot
grokking-devinterp-long:
	@$(MAKE) --no-print-directory grokking-devinterp $(GD_LONG_VARS)
grokking-devinterp-long-plot:
	@$(MAKE) --no-print-directory grokking-devinterp-plot $(GD_LONG_VARS)

# The transformer of `make transformer-quick` (mk/grokking.mk: its data, model, AdamW flags and seeds), trained
# again, and λ̂ of every GDT_LLC_EVERY-th epoch's checkpoint with devinterp's example's sampler settings (GD_LLC_FLAGS)
# instead of transformer-quick's (ε 3e-5, γ 1000, nβ = n/ln n): does the rise-then-fall appear there too?
#   make grokking-devinterp-transformer       train | llc into $(RUNS)/grokking-devinterp-transformer, records and
#                                             figure into $(RESULTS)/grokking-devinterp-transformer
#   make grokking-devinterp-transformer-plot  only redraw its figure
GDT_RUNS ?= $(RUNS)/grokking-devinterp-transformer
GDT_RESULTS ?= $(RESULTS)/grokking-devinterp-transformer
GDT_LLC_EVERY ?= 10

.PHONY: grokking-devinterp-transformer grokking-devinterp-transformer-plot
grokking-devinterp-transformer: build
	@rm -rf $(GDT_RUNS) && mkdir -p $(GDT_RUNS) $(GDT_RESULTS)
	@echo '$(GROK_MODEL_JSON)' > $(GDT_RUNS)/model.json
	$(BIN)/datagen modular --p $(GROK_P) --op add --train-fraction $(GROK_TRAIN_FRACTION) --seed $(GROK_DATA_SEED) \
	  --out $(GDT_RUNS)/add.safetensors > $(GDT_RUNS)/datagen.json
	@start=$$(date +%s); \
	$(BIN)/train --model $(GDT_RUNS)/model.json --data $(GDT_RUNS)/add.safetensors $(GROK_TRAIN_FLAGS) \
	  --epochs $(GROK_EPOCHS) --seed $(GROK_SEED) --eval-train --run grokking --quiet --out $(GDT_RUNS)/run \
	| tee $(GDT_RUNS)/train.jsonl \
	| { grep -E '$(call epochs_re,$(shell seq $(GDT_LLC_EVERY) $(GDT_LLC_EVERY) $(GROK_EPOCHS)))' || true; } \
	| $(BIN)/llc $(GD_LLC_FLAGS) --quiet > $(GDT_RUNS)/llc.jsonl; \
	echo "make: grokking-devinterp-transformer: train | llc took $$(( $$(date +%s) - start )) s" >&2
	cp $(GDT_RUNS)/model.json $(GDT_RUNS)/datagen.json $(GDT_RUNS)/train.jsonl $(GDT_RUNS)/llc.jsonl $(GDT_RESULTS)/
	@$(MAKE) --no-print-directory grokking-devinterp-transformer-plot

grokking-devinterp-transformer-plot: build
	$(BIN)/report curves --metric /train_acc --metric /test_acc --label /run --ylabel "accuracy (%)" \
	  --title "Training and test accuracy (every epoch)" --out $(GDT_RESULTS)/accuracy $(GDT_RESULTS)/train.jsonl
	$(BIN)/report curves --metric /llc/llc --band /llc/llc_sd --label /run \
	  --title "LLC every $(GDT_LLC_EVERY) epochs (devinterp's settings: ε 3e-3, γ 5, nβ 2, 500 draws)" \
	  --out $(GDT_RESULTS)/llc $(GDT_RESULTS)/llc.jsonl
	$(BIN)/report stack --title "transformer-quick's run, LLC with devinterp's example's sampler, seed $(GROK_SEED)" \
	  --out $(GDT_RESULTS)/grokking $(GDT_RESULTS)/accuracy.json $(GDT_RESULTS)/llc.json

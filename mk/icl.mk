# In-context linear regression (issue #16): the loss at the y positions, measured per position.
#
#   make icl-quick   datagen icl-regression (D = 4, K = 8, fresh tasks, σ = ICL_NOISE), train the example
#                    examples/icl-regression.json (a two-layer causal transformer read at its x-tokens by
#                    `positions`) with AdamW on one core, then per position k the test MSE of the final
#                    checkpoint against ridge (λ = σ², the Bayes-optimal prediction) and least squares on
#                    the k earlier pairs (`datagen icl-baseline`), λ̂ of the final checkpoint (`llc`); the
#                    table, the records and λ̂ go to $(ICL_RESULTS). A few minutes on one core.
#
# D and K are the example's (its input [2K, D + 1] = [16, 5]).

ICL_RUNS ?= $(RUNS)/icl
ICL_RESULTS ?= $(RESULTS)/icl
ICL_MODEL ?= examples/icl-regression.json
ICL_NOISE ?= 0.1
ICL_SAMPLES ?= 32768
ICL_TEST_SAMPLES ?= 2048
ICL_DATA_SEED ?= 1
ICL_SEED ?= 2
ICL_EPOCHS ?= 40
ICL_TRAIN_FLAGS ?= --optimizer adamw --lr 1e-3 --weight-decay 0 --batch-size 256 --threads 1
# λ̂: as results/grokking.md (γ 1000, nβ = n/ln n with n the training sequences, two chains of 200 steps of
# burn-in then 300 draws) but ε 1e-5: at its 3e-5 the acceptance falls to 0.3 here; λ̂ depends on ε (README).
ICL_LLC_FLAGS ?= --epsilon 1e-5 --gamma 1000 --nbeta dataset --batch-size 128 --chains 2 --burn-in 200 --draws 300 --seed 1 --threads 1

.PHONY: icl-quick

icl-quick: build
	@rm -rf $(ICL_RUNS) && mkdir -p $(ICL_RUNS) $(ICL_RESULTS)
	$(BIN)/datagen icl-regression --dim 4 --context 8 --tasks 0 --noise $(ICL_NOISE) --samples $(ICL_SAMPLES) \
	  --test-samples $(ICL_TEST_SAMPLES) --seed $(ICL_DATA_SEED) --out $(ICL_RUNS)/icl.safetensors > $(ICL_RUNS)/datagen.json
	@start=$$(date +%s); \
	$(BIN)/train --model $(ICL_MODEL) --data $(ICL_RUNS)/icl.safetensors $(ICL_TRAIN_FLAGS) --epochs $(ICL_EPOCHS) \
	  --seed $(ICL_SEED) --run icl --quiet --out $(ICL_RUNS)/run > $(ICL_RUNS)/train.jsonl; \
	echo "make: icl-quick: train took $$(( $$(date +%s) - start )) s" >&2
	$(BIN)/datagen icl-baseline --data $(ICL_RUNS)/icl.safetensors --table $(ICL_RUNS)/icl-quick.md \
	  $(ICL_RUNS)/run/epoch-$$(printf %04d $(ICL_EPOCHS)).safetensors > $(ICL_RUNS)/baseline.jsonl
	@start=$$(date +%s); \
	$(BIN)/llc $(ICL_LLC_FLAGS) --data $(ICL_RUNS)/icl.safetensors --quiet \
	  $(ICL_RUNS)/run/epoch-$$(printf %04d $(ICL_EPOCHS)).safetensors > $(ICL_RUNS)/llc.jsonl; \
	echo "make: icl-quick: llc took $$(( $$(date +%s) - start )) s" >&2
	cp $(ICL_RUNS)/datagen.json $(ICL_RUNS)/train.jsonl $(ICL_RUNS)/baseline.jsonl $(ICL_RUNS)/llc.jsonl \
	  $(ICL_RUNS)/icl-quick.md $(ICL_RESULTS)/
	@cat $(ICL_RESULTS)/icl-quick.md
	@$(BIN)/report mean --metric /llc/llc $(ICL_RESULTS)/llc.jsonl | sed 's/^/λ̂ of the final checkpoint: /'

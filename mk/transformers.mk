# The paper's protocol on a transformer (issue #16, results/transformers.md): modular addition, one small
# one-layer transformer, the same initialisation per seed for four optimisers:
#   sgd       SGD, Nesterov momentum 0.9, no weight decay (the paper's baseline)
#   ngd-f32   the paper's online NGD as it ran it: f32 state, α 0.01, then the same momentum
#   ngd-f64   the same with f64 state (--ngd-dtype f64)
#   adamw     AdamW with decoupled weight decay 1, betas 0.9,0.98 (the field's default; results/grokking.md)
# Every run trains TSTUDY_EPOCHS epochs (the same number of steps for every optimiser), evaluates the whole
# training set at every epoch (--eval-train), estimates λ̂ at TSTUDY_LLC_EPOCHS (the last one included) and the
# Hessian trace (Hutch++ on the whole training set) at the last epoch.
#
#   make transformer-study         tune (once), then the runs, then save the records and the report
#   make transformer-study-tune    SGD's and NGD's learning rate: a grid on seed 1, the lowest training loss at
#                                  the last epoch (the optimiser's own objective; ties go to the first listed)
#   make transformer-study-runs    the runs (file targets: an interrupted study resumes; make -j2 runs two at once)
#   make transformer-study-save    copies the records from $(TSTUDY_RUNS) into $(TSTUDY_RECORDS) (committed)
#   make transformer-study-report  the tables and figures from the committed records only (no training)
#   make transformer-study-same-seed  runs one seed of each optimiser again and checks the records are identical
#                                  to the committed ones (results/transformers/records: main's tools reproduce them)
#   make transformer-study-shadow  the f32 NGD of one seed with an f64 shadow: how far apart the directions are
#
# A run already made is not redone when a knob changes: delete it (or use another TSTUDY_RUNS).

TSTUDY_RUNS ?= $(RUNS)/transformers
TSTUDY_RESULTS ?= $(RESULTS)/transformers
TSTUDY_RECORDS ?= $(TSTUDY_RESULTS)/records
TSTUDY_SEEDS ?= $(shell seq 1 10)
TSTUDY_VARIANTS ?= sgd ngd-f32 ngd-f64 adamw
TSTUDY_P ?= 31
TSTUDY_TRAIN_FRACTION ?= 0.5
TSTUDY_DATA_SEED ?= 1
TSTUDY_D_MODEL ?= 32
TSTUDY_HEADS ?= 4
TSTUDY_MLP ?= 128
TSTUDY_EPOCHS ?= 400
TSTUDY_BATCH ?= 128
# Must include the last epoch (its record gets the Hessian trace).
TSTUDY_LLC_EPOCHS ?= 80 160 240 320 400
# Train records kept in the committed curves (every this many epochs; the λ̂ epochs' records are kept in full).
TSTUDY_LOG_EVERY ?= 10
TSTUDY_NGD_ALPHA ?= 0.01
TSTUDY_ADAMW_FLAGS ?= --optimizer adamw --lr 3e-3 --weight-decay 1 --betas 0.9,0.98
# The learning-rate grid of SGD and NGD (f32 state, as the paper ran it; ngd-f64 uses NGD's choice), on seed 1.
TSTUDY_LRS ?= 0.01 0.03 0.1 0.3
TSTUDY_TUNE_SEED ?= 1
# Set to skip the tuning, e.g. TSTUDY_LR_SGD=0.1.
TSTUDY_LR_SGD ?=
TSTUDY_LR_NGD ?=
# λ̂: the transformer settings of results/grokking.md (ε 3e-5, γ 1000, nβ = n/ln n), two chains of 200 steps of
# burn-in and 300 draws, one thread per estimate so that `make -j2` uses two cores.
TSTUDY_LLC_FLAGS ?= --epsilon 3e-5 --gamma 1000 --nbeta dataset --batch-size 128 --chains 2 --burn-in 200 --draws 300 --threads 1
# The trace: Hutch++ with 99 Hessian-vector products on every training sample (its standard error is recorded).
TSTUDY_TRACE_FLAGS ?= --full --hutchpp --probes 99

TSTUDY_MODEL_JSON = {"input": [3], "layers": [\
{"type": "embedding", "num": $(shell echo $$(($(TSTUDY_P) + 1))), "dim": $(TSTUDY_D_MODEL)}, {"type": "positional"},\
{"type": "residual", "layers": [{"type": "layernorm"}, {"type": "attention", "heads": $(TSTUDY_HEADS), "causal": true}]},\
{"type": "residual", "layers": [{"type": "layernorm"}, {"type": "linear", "out": $(TSTUDY_MLP)}, {"type": "gelu"}, {"type": "linear", "out": $(TSTUDY_D_MODEL)}]},\
{"type": "layernorm"}, {"type": "last"}, {"type": "linear", "out": $(TSTUDY_P)}], "loss": "cross_entropy"}

TSTUDY_DATA := $(TSTUDY_RUNS)/add.safetensors
TSTUDY_MODEL := $(TSTUDY_RUNS)/model.json
# Seed-major, so that a study stopped part-way has every optimiser for the seeds it finished.
TSTUDY_TABLE_RUNS := $(foreach s,$(TSTUDY_SEEDS),$(foreach v,$(TSTUDY_VARIANTS),$(TSTUDY_RUNS)/table/$(v)/s$(s).jsonl))
TSTUDY_TUNE_RUNS := $(foreach o,sgd ngd,$(foreach l,$(TSTUDY_LRS),$(TSTUDY_RUNS)/tune/$(o)-$(l).jsonl))
tstudy_lr = $(or $(TSTUDY_LR_$(1)),$$(cat $(TSTUDY_RUNS)/lr-$(2).txt))
tstudy_last_re = "epoch":$(TSTUDY_EPOCHS),
tstudy_log_epochs = $(sort $(shell seq $(TSTUDY_LOG_EVERY) $(TSTUDY_LOG_EVERY) $(TSTUDY_EPOCHS)) $(TSTUDY_LLC_EPOCHS))

.PHONY: transformer-study transformer-study-tune transformer-study-runs transformer-study-save \
	transformer-study-report transformer-study-same-seed

$(TSTUDY_MODEL):
	@mkdir -p $(@D)
	@echo '$(TSTUDY_MODEL_JSON)' > $@.tmp && mv $@.tmp $@

$(TSTUDY_DATA):
	@mkdir -p $(@D)
	$(BIN)/datagen modular --p $(TSTUDY_P) --op add --train-fraction $(TSTUDY_TRAIN_FRACTION) --seed $(TSTUDY_DATA_SEED) \
	  --out $@ > $(TSTUDY_RUNS)/datagen.json || { rm -f $@; exit 1; }

# ---- the learning rates ----------------------------------------------------------------------------
# $(TSTUDY_RUNS)/tune/<sgd|ngd>-<lr>.jsonl: the train records of one run (seed TSTUDY_TUNE_SEED, the study's epochs).
$(TSTUDY_RUNS)/tune/%.jsonl: | $(TSTUDY_DATA) $(TSTUDY_MODEL)
	@mkdir -p $(@D)
	@stem=$*; opt=$${stem%%-*}; lr=$${stem#*-}; \
	ngd=$$([ "$$opt" = ngd ] && echo "--ngd-alpha $(TSTUDY_NGD_ALPHA)" || true); \
	$(BIN)/train --model $(TSTUDY_MODEL) --data $(TSTUDY_DATA) --optimizer $$opt $$ngd --lr $$lr \
	  --batch-size $(TSTUDY_BATCH) --epochs $(TSTUDY_EPOCHS) --seed $(TSTUDY_TUNE_SEED) --eval-train \
	  --out $(@D)/$* --overwrite --run tune-$* --variant $$opt --quiet > $@.tmp; \
	rm -rf $(@D)/$*; mv $@.tmp $@

$(TSTUDY_RUNS)/lr-sgd.txt: $(filter $(TSTUDY_RUNS)/tune/sgd-%,$(TSTUDY_TUNE_RUNS))
$(TSTUDY_RUNS)/lr-ngd.txt: $(filter $(TSTUDY_RUNS)/tune/ngd-%,$(TSTUDY_TUNE_RUNS))
# The lowest training loss on the whole training set at the last epoch (the test split does not choose).
$(TSTUDY_RUNS)/lr-%.txt:
	$(BIN)/report best --metric /train_eval_loss --epochs $(TSTUDY_EPOCHS) --print /optimizer/lr $^ < /dev/null > $@.tmp
	@mv $@.tmp $@

transformer-study-tune: build
	$(call timed,$(MAKE) -k $(TSTUDY_RUNS)/lr-sgd.txt $(TSTUDY_RUNS)/lr-ngd.txt,transformer-study-tune runs)
	@echo "learning rates: sgd $$(cat $(TSTUDY_RUNS)/lr-sgd.txt), ngd $$(cat $(TSTUDY_RUNS)/lr-ngd.txt)"

# ---- the runs --------------------------------------------------------------------------------------
$(foreach s,$(TSTUDY_SEEDS),$(TSTUDY_RUNS)/table/sgd/s$(s).jsonl): $(if $(TSTUDY_LR_SGD),,$(TSTUDY_RUNS)/lr-sgd.txt)
$(foreach v,ngd-f32 ngd-f64,$(foreach s,$(TSTUDY_SEEDS),$(TSTUDY_RUNS)/table/$(v)/s$(s).jsonl)): \
	$(if $(TSTUDY_LR_NGD),,$(TSTUDY_RUNS)/lr-ngd.txt)

# $(TSTUDY_RUNS)/table/<variant>/s<seed>.jsonl: train | llc at the λ̂ epochs, then the Hessian trace of the last
# one; every train record goes to s<seed>.train.jsonl (not committed), every TSTUDY_LOG_EVERY-th to
# s<seed>.curves.jsonl (committed); only the last checkpoint is kept.
$(TSTUDY_RUNS)/table/%.jsonl: | $(TSTUDY_DATA) $(TSTUDY_MODEL)
	$(if $(filter $(TSTUDY_EPOCHS),$(TSTUDY_LLC_EPOCHS)),,$(error TSTUDY_LLC_EPOCHS ($(TSTUDY_LLC_EPOCHS)) must include the last epoch $(TSTUDY_EPOCHS)))
	@mkdir -p $(@D)
	@set -- $(subst /, ,$*); variant=$$1; seed=$${2#s}; dir=$(@D)/s$$seed; \
	case $$variant in \
	  sgd) opt="--optimizer sgd --lr $(call tstudy_lr,SGD,sgd)";; \
	  ngd-f32) opt="--optimizer ngd --ngd-alpha $(TSTUDY_NGD_ALPHA) --lr $(call tstudy_lr,NGD,ngd)";; \
	  ngd-f64) opt="--optimizer ngd --ngd-alpha $(TSTUDY_NGD_ALPHA) --ngd-dtype f64 --lr $(call tstudy_lr,NGD,ngd)";; \
	  adamw) opt="$(TSTUDY_ADAMW_FLAGS)";; \
	  *) echo "make: $@: unknown variant $$variant (known: sgd ngd-f32 ngd-f64 adamw)" >&2; exit 1;; \
	esac; \
	start=$$(date +%s); \
	$(BIN)/train --model $(TSTUDY_MODEL) --data $(TSTUDY_DATA) $$opt --batch-size $(TSTUDY_BATCH) \
	  --epochs $(TSTUDY_EPOCHS) --seed $$seed --eval-train --out $$dir --overwrite \
	  --run transformer-$$variant-s$$seed --variant $$variant --quiet \
	| tee $(@D)/s$$seed.train.jsonl.tmp \
	| grep -E '$(call epochs_re,$(TSTUDY_LLC_EPOCHS))' \
	| $(BIN)/llc $(TSTUDY_LLC_FLAGS) --seed $$seed --quiet > $@.llc.tmp; \
	{ grep -vF '$(tstudy_last_re)' $@.llc.tmp || true; \
	  grep -F '$(tstudy_last_re)' $@.llc.tmp | $(BIN)/hessian-trace $(TSTUDY_TRACE_FLAGS) --seed $$seed --quiet; } > $@.tmp; \
	grep -E '$(call epochs_re,$(tstudy_log_epochs))' $(@D)/s$$seed.train.jsonl.tmp > $(@D)/s$$seed.curves.jsonl; \
	mv $(@D)/s$$seed.train.jsonl.tmp $(@D)/s$$seed.train.jsonl; rm -f $@.llc.tmp; \
	find $$dir -name 'epoch-*' ! -name 'epoch-$(shell printf %04d $(TSTUDY_EPOCHS)).*' -delete; \
	mv $@.tmp $@; \
	echo "make: $@ took $$(( $$(date +%s) - start )) s" >&2

transformer-study-runs: $(TSTUDY_TABLE_RUNS)

transformer-study: build
	$(call timed,$(MAKE) -k transformer-study-runs,transformer-study runs)
	@$(MAKE) --no-print-directory transformer-study-save
	@$(MAKE) --no-print-directory transformer-study-report

# ---- the committed records ---------------------------------------------------------------------------
# Per run: s<seed>.jsonl (the λ̂ epochs' records with llc, the last with hessian) and s<seed>.curves.jsonl (every
# TSTUDY_LOG_EVERY-th epoch's train record); the tuning runs thinned the same way; the chosen learning rates.
transformer-study-save:
	@mkdir -p $(TSTUDY_RECORDS)/tune
	@cp $(TSTUDY_MODEL) $(TSTUDY_RUNS)/datagen.json $(TSTUDY_RECORDS)/
	@cp $(TSTUDY_RUNS)/lr-*.txt $(TSTUDY_RECORDS)/ 2>/dev/null || true
	@for f in $(call existing,$(TSTUDY_TUNE_RUNS)); do \
	  grep -E '$(call epochs_re,$(tstudy_log_epochs))' $$f > $(TSTUDY_RECORDS)/tune/$$(basename $$f); done
	@for v in $(TSTUDY_VARIANTS); do mkdir -p $(TSTUDY_RECORDS)/table/$$v; \
	  for s in $(TSTUDY_SEEDS); do d=$(TSTUDY_RUNS)/table/$$v; \
	    if [ -s $$d/s$$s.jsonl ]; then cp $$d/s$$s.jsonl $$d/s$$s.curves.jsonl $(TSTUDY_RECORDS)/table/$$v/; fi; \
	  done; done
	@echo "make: $$(find $(TSTUDY_RECORDS)/table -name 's*.jsonl' ! -name '*.curves.jsonl' | wc -l) run records saved in $(TSTUDY_RECORDS)"

# ---- the report (records only) ----------------------------------------------------------------------
TSTUDY_REC_RUNS = $(call existing,$(foreach v,$(TSTUDY_VARIANTS),$(foreach s,$(TSTUDY_SEEDS),$(TSTUDY_RECORDS)/table/$(v)/s$(s).jsonl)))
TSTUDY_REC_RUNS_NGD = $(call existing,$(foreach v,$(filter-out adamw,$(TSTUDY_VARIANTS)),$(foreach s,$(TSTUDY_SEEDS),$(TSTUDY_RECORDS)/table/$(v)/s$(s).jsonl)))
TSTUDY_REC_CURVES = $(call existing,$(foreach v,$(TSTUDY_VARIANTS),$(foreach s,$(TSTUDY_SEEDS),$(TSTUDY_RECORDS)/table/$(v)/s$(s).curves.jsonl)))
# name:pointer of each table at the last epoch.
TSTUDY_METRICS := llc:/llc/llc trace:/hessian/trace train-loss:/train_eval_loss train-acc:/train_acc \
	test-loss:/test_loss test-acc:/test_acc llc-rhat:/llc/diagnostics/rhat \
	llc-acceptance:/llc/diagnostics/mala_acceptance_mean trace-se:/hessian/trace_se

transformer-study-report: build
	@mkdir -p $(TSTUDY_RESULTS)
	@runs="$(TSTUDY_REC_RUNS)"; sum=$(TSTUDY_RESULTS)/summary.md; \
	{ echo "# The paper's protocol on a transformer: four optimisers from the same initialisations"; echo; \
	  echo "Modular addition mod $(TSTUDY_P), $(TSTUDY_EPOCHS) epochs; every number at epoch $(TSTUDY_EPOCHS). Rows: mean ± sd over seeds; Welch's t and wins (seeds where the variant's value is higher) against the baseline, paired by seed."; echo; \
	} > $$sum.tmp; \
	table() { echo "## $$1" >> $$sum.tmp; echo >> $$sum.tmp; \
	  if $(BIN)/report table --metric $$2 --epochs $(TSTUDY_EPOCHS) --group /model/name --label /variant \
	      --baseline $$3 --out $$4 $$runs < /dev/null > /dev/null 2>$$4.err; then \
	    cat $$4.md >> $$sum.tmp; rm -f $$4.err; \
	  else echo "(no table: $$(cat $$4.err))" >> $$sum.tmp; rm -f $$4.err; fi; echo >> $$sum.tmp; }; \
	for m in $(TSTUDY_METRICS); do name=$${m%%:*}; ptr=$${m#*:}; \
	  table "$$name: $$ptr against sgd" $$ptr sgd $(TSTUDY_RESULTS)/$$name; done; \
	for m in llc:/llc/llc trace:/hessian/trace test-loss:/test_loss; do name=$${m%%:*}; ptr=$${m#*:}; \
	  table "$$name against ngd-f32 (does the f64 state change it?): $$ptr" $$ptr ngd-f32 $(TSTUDY_RESULTS)/$$name-vs-ngd-f32; done; \
	for m in ngd-nan-fallbacks:/ngd_nan_fallbacks ngd-norm-ratio:/ngd_norm_ratio; do name=$${m%%:*}; ptr=$${m#*:}; \
	  table "NGD diagnostic $$name (epoch $(TSTUDY_EPOCHS), per epoch): $$ptr" $$ptr ngd-f32 $(TSTUDY_RESULTS)/$$name; done; \
	mv $$sum.tmp $$sum
	@tune="$(call existing,$(TSTUDY_TUNE_RUNS:$(TSTUDY_RUNS)/%=$(TSTUDY_RECORDS)/%))"; if [ -n "$$tune" ]; then \
	  $(BIN)/report table --metric /train_eval_loss --epochs $(TSTUDY_EPOCHS) --group /variant --label /optimizer/lr \
	    --baseline none --title "Learning-rate tuning (seed $(TSTUDY_TUNE_SEED)): training loss at epoch $(TSTUDY_EPOCHS)" \
	    --out $(TSTUDY_RESULTS)/tune-train-loss $$tune < /dev/null > /dev/null; \
	  $(BIN)/report table --metric /test_acc --epochs $(TSTUDY_EPOCHS) --group /variant --label /optimizer/lr \
	    --baseline none --title "Learning-rate tuning (seed $(TSTUDY_TUNE_SEED)): test accuracy at epoch $(TSTUDY_EPOCHS)" \
	    --out $(TSTUDY_RESULTS)/tune-test-acc $$tune < /dev/null > /dev/null; \
	  $(BIN)/report curves --metric /train_acc --x /epoch --label /variant --label /optimizer/lr \
	    --title "Learning-rate tuning (seed $(TSTUDY_TUNE_SEED)): training accuracy" \
	    --out $(TSTUDY_RESULTS)/tune-train-acc $$tune < /dev/null; fi
	$(BIN)/report curves --metric /llc/llc --x /epoch --label /variant \
	  --title "LLC over training (mean ± sd over seeds), modular addition mod $(TSTUDY_P)" \
	  --out $(TSTUDY_RESULTS)/llc-over-training $(TSTUDY_REC_RUNS) < /dev/null
	$(BIN)/report curves --metric /llc/llc --x /epoch --label /variant \
	  --title "LLC over training, SGD and NGD only (AdamW's: llc-over-training.png)" \
	  --out $(TSTUDY_RESULTS)/llc-over-training-sgd-ngd $(TSTUDY_REC_RUNS_NGD) < /dev/null
	$(BIN)/report curves --metric /train_acc --x /epoch --label /variant --ylabel "training accuracy (%)" \
	  --title "Training accuracy on the whole training set (mean ± sd over seeds)" \
	  --out $(TSTUDY_RESULTS)/train-acc-over-training $(TSTUDY_REC_CURVES) < /dev/null
	$(BIN)/report curves --metric /test_acc --x /epoch --label /variant \
	  --title "Test accuracy (mean ± sd over seeds)" --out $(TSTUDY_RESULTS)/test-acc-over-training $(TSTUDY_REC_CURVES) < /dev/null
	$(BIN)/report stack --title "Modular addition mod $(TSTUDY_P), one-layer transformer, $(words $(TSTUDY_SEEDS)) seeds" \
	  --out $(TSTUDY_RESULTS)/study $(TSTUDY_RESULTS)/train-acc-over-training.json $(TSTUDY_RESULTS)/test-acc-over-training.json \
	  $(TSTUDY_RESULTS)/llc-over-training.json $(TSTUDY_RESULTS)/llc-over-training-sgd-ngd.json
	@scripts/transformer-study-diagnostics.sh $(TSTUDY_RECORDS) $(TSTUDY_EPOCHS) > $(TSTUDY_RESULTS)/diagnostics.md
	@cat $(TSTUDY_RESULTS)/diagnostics.md
	@for m in llc trace train-acc test-acc; do echo "## $$m"; cat $(TSTUDY_RESULTS)/$$m.md 2>/dev/null; done
	@echo "make: all tables in $(TSTUDY_RESULTS)/summary.md"

# ---- same seed, same records ------------------------------------------------------------------------------
# Runs seed TSTUDY_CHECK_SEED of every variant again into $(TSTUDY_RUNS)-again and compares its records with the
# committed ones in $(TSTUDY_RECORDS) (by default results/transformers/records, the set main reproduces; the first set,
# made with 9cc188c's tools, is results/transformers-9cc188c and differs) once the wall-clock fields (seconds,
# seconds_per_chain) are removed and each file's run folder is replaced in its paths (scripts/transformer-study-same-seed.sh);
# and the last checkpoints' tensors byte for byte where $(TSTUDY_RUNS)/table still holds the study's runs.
TSTUDY_CHECK_SEED ?= 1
transformer-study-same-seed: build
	@$(MAKE) --no-print-directory -k $(foreach v,$(TSTUDY_VARIANTS),$(TSTUDY_RUNS)-again/table/$(v)/s$(TSTUDY_CHECK_SEED).jsonl) \
	  TSTUDY_RUNS=$(TSTUDY_RUNS)-again \
	  $(if $(TSTUDY_LR_SGD),,TSTUDY_LR_SGD=$$(cat $(TSTUDY_RECORDS)/lr-sgd.txt)) \
	  $(if $(TSTUDY_LR_NGD),,TSTUDY_LR_NGD=$$(cat $(TSTUDY_RECORDS)/lr-ngd.txt))
	@RUNS_A=$(TSTUDY_RUNS)/table RUNS_B=$(TSTUDY_RUNS)-again/table \
	  scripts/transformer-study-same-seed.sh $(TSTUDY_RECORDS)/table $(TSTUDY_RUNS)-again/table $(TSTUDY_CHECK_SEED) $(TSTUDY_VARIANTS)

# ---- how far the f32 state's directions are from f64's ----------------------------------------------------
# The online NGD with f32 state (seed TSTUDY_CHECK_SEED, the study's learning rate and epochs) with a shadow f64-state
# preconditioner on the same gradients: ngd_shadow_difference = ‖d_f32 − d_f64‖/‖g‖ per epoch (as mk/beyond.mk's
# noise level); the record every TSTUDY_LOG_EVERY epochs goes to $(TSTUDY_RECORDS)/shadow.jsonl, the mean over all
# epochs to stdout.
.PHONY: transformer-study-shadow
transformer-study-shadow: build | $(TSTUDY_DATA) $(TSTUDY_MODEL)
	@mkdir -p $(TSTUDY_RUNS) $(TSTUDY_RECORDS)
	$(BIN)/train --model $(TSTUDY_MODEL) --data $(TSTUDY_DATA) --optimizer ngd --ngd-alpha $(TSTUDY_NGD_ALPHA) \
	  --lr $(or $(TSTUDY_LR_NGD),$$(cat $(TSTUDY_RECORDS)/lr-ngd.txt)) --ngd-shadow-f64 --batch-size $(TSTUDY_BATCH) \
	  --epochs $(TSTUDY_EPOCHS) --seed $(TSTUDY_CHECK_SEED) --eval-train --out $(TSTUDY_RUNS)/shadow --overwrite \
	  --run transformer-ngd-f32-shadow-s$(TSTUDY_CHECK_SEED) --variant ngd-f32-shadow --quiet > $(TSTUDY_RUNS)/shadow.jsonl.tmp
	@mv $(TSTUDY_RUNS)/shadow.jsonl.tmp $(TSTUDY_RUNS)/shadow.jsonl; rm -rf $(TSTUDY_RUNS)/shadow
	@grep -E '$(call epochs_re,$(tstudy_log_epochs))' $(TSTUDY_RUNS)/shadow.jsonl > $(TSTUDY_RECORDS)/shadow.jsonl
	@echo "mean ‖d_f32 − d_f64‖/‖g‖ over $(TSTUDY_EPOCHS) epochs: $$($(BIN)/report mean --metric /ngd_shadow_difference $(TSTUDY_RUNS)/shadow.jsonl < /dev/null)"

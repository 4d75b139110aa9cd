# Beyond the paper (issue #8): is NGD's higher λ̂ real, or rounding noise?
#
#   make beyond-table        the paper's table protocol (30 seeds, 20 epochs, λ̂ at epochs 19-20) for MLP 1×128 and
#                            2×256 on MNIST and 2×128 on Fashion-MNIST, six optimisers from the same initialisations:
#                              sgd              SGD (the baseline)
#                              ngd-f32          the paper's online NGD as it ran it: f32 state, α 0.01
#                              ngd-f64          the same with f64 state (--ngd-dtype f64)
#                              exact-empirical  ngd-exact, empirical Fisher, damping chosen by beyond-damping
#                              exact-sampled    ngd-exact, sampled (true) Fisher, damping chosen by beyond-damping
#                              sgd-noise        SGD plus isotropic noise of the size of NGD's f32-f64 difference
#                            each with λ̂, the exact Hessian trace at the last epoch, test loss and accuracy and the
#                            NGD diagnostics; tables in $(BEYOND_RESULTS)/ (summary.md has them all)
#   make beyond-damping      ngd-exact's relative damping per Fisher: the lowest training loss after a short sweep
#   make beyond-noise-level  R = ‖d_f32 − d_f64‖/‖g‖ of the online NGD, measured with a shadow f64 preconditioner
#   make beyond-quick        the whole pipeline, small, in a couple of minutes ($(RESULTS)/beyond-quick/)
#
# beyond-table makes the damping and the noise level first when its runs need them (BEYOND_DAMPING_EMPIRICAL,
# BEYOND_DAMPING_SAMPLED and BEYOND_NOISE override them). Every run is a file target written atomically (.tmp
# then mv): an interrupted target resumes, `make -j2` runs two runs at a time, a failed run is reported (-k keeps
# going) and the tables list the seeds that are missing. Run one beyond target at a time (each calls make
# recursively, and two at once could build the same damping or noise file together). A run already made is not
# redone when a knob changes: delete it (or use another BEYOND_RUNS).

BEYOND_RUNS ?= $(RUNS)/beyond
BEYOND_RESULTS ?= $(RESULTS)/beyond
BEYOND_SEEDS ?= $(shell seq 1 30)
# <dataset>/<model> pairs.
BEYOND_ARCHS ?= mnist/mlp_1x128 mnist/mlp_2x256 fashion-mnist/mlp_2x128
BEYOND_VARIANTS ?= sgd ngd-f32 ngd-f64 exact-empirical exact-sampled sgd-noise
BEYOND_EPOCHS ?= 20
# Must include the last epoch (its record gets the Hessian trace).
BEYOND_LLC_EPOCHS ?= 19 20
BEYOND_LLC_DRAWS ?= $(LLC_DRAWS)
BEYOND_NGD_ALPHA ?= $(TABLE_NGD_ALPHA)
# ngd-exact's direction rescaled to the gradient's norm, as the online NGD's is, so that the damping shapes
# only the direction and the learning rate keeps its meaning (without it the step is ‖(F + λI)⁻¹g‖).
# train's default since #13, passed explicitly so that the runs do not depend on it; --no-preserve-norm
# turns it off.
BEYOND_EXACT_FLAGS ?= --preserve-norm
# The damping sweep: MNIST, this model, these relative dampings (λ = α·tr(F)/P), this many epochs, one seed.
BEYOND_DAMPING_ARCH ?= mlp_1x128
BEYOND_DAMPINGS ?= 1e-3 1e-2 0.1 1 10
BEYOND_DAMPING_EPOCHS ?= 5
BEYOND_DAMPING_SEED ?= 1
# Set to use a damping without the sweep, e.g. BEYOND_DAMPING_EMPIRICAL=0.1.
BEYOND_DAMPING_EMPIRICAL ?=
BEYOND_DAMPING_SAMPLED ?=
# The noise level: the online NGD (f32 state, α as the table) with a shadow f64 state, MNIST, this model, as
# many epochs as the table (the f32-f64 difference grows during training: 0.33, 0.83, 0.99 in epochs 1-3).
BEYOND_NOISE_ARCH ?= mlp_1x128
BEYOND_NOISE_EPOCHS ?= $(BEYOND_EPOCHS)
BEYOND_NOISE_SEED ?= 1
# Set to use an R without the measurement, e.g. BEYOND_NOISE=0.8.
BEYOND_NOISE ?=
# Tensors whose NGD diagnostics are tabulated (the MLPs here have at most these).
BEYOND_TENSORS ?= 1.weight 1.bias 3.weight 3.bias 5.weight 5.bias

BEYOND_FISHERS := empirical sampled
beyond_runs_of = $(foreach a,$(BEYOND_ARCHS),$(foreach s,$(BEYOND_SEEDS),$(BEYOND_RUNS)/table/$(a)/$(1)/s$(s).jsonl))
BEYOND_TABLE_RUNS := $(foreach v,$(BEYOND_VARIANTS),$(call beyond_runs_of,$(v)))
BEYOND_DAMPING_RUNS := $(foreach f,$(BEYOND_FISHERS),$(foreach d,$(BEYOND_DAMPINGS),$(BEYOND_RUNS)/damping/$(f)-$(d).jsonl))
# The damping of a Fisher ($(1): EMPIRICAL, $(2): empirical) and the noise level, as shell words.
beyond_damping = $(or $(BEYOND_DAMPING_$(1)),$$(cat $(BEYOND_RUNS)/damping-$(2).txt))
beyond_noise = $(or $(BEYOND_NOISE),$$(cat $(BEYOND_RUNS)/noise-level.txt))
beyond_epochs = $(subst $(space),$(comma),$(strip $(1)))

.PHONY: beyond-table beyond-table-runs beyond-report beyond-damping beyond-noise-level beyond-quick

# ---- the damping sweep -----------------------------------------------------------------------------
# $(BEYOND_RUNS)/damping/<fisher>-<damping>.jsonl: the train records. A run that fails (diverges) is reported
# and kept without its last epoch, so it cannot be chosen.
$(BEYOND_RUNS)/damping/%.jsonl:
	@mkdir -p $(@D)
	@stem=$*; fisher=$${stem%%-*}; damping=$${stem#*-}; \
	{ $(BIN)/train --model $(BEYOND_DAMPING_ARCH) --dataset mnist --data-dir $(DATA) --optimizer ngd-exact \
	  --fisher $$fisher --damping-relative $$damping $(BEYOND_EXACT_FLAGS) --epochs $(BEYOND_DAMPING_EPOCHS) \
	  --seed $(BEYOND_DAMPING_SEED) $(samples_flag) --out $(@D)/$* --overwrite --run damping-$* --variant exact-$$fisher --quiet \
	  || echo "make: ngd-exact ($$fisher Fisher, relative damping $$damping) failed (see above); it is not chosen" >&2; \
	} > $@.tmp; \
	rm -rf $(@D)/$*; mv $@.tmp $@

$(foreach f,$(BEYOND_FISHERS),$(eval $(BEYOND_RUNS)/damping-$(f).txt: \
	$(filter $(BEYOND_RUNS)/damping/$(f)-%,$(BEYOND_DAMPING_RUNS))))

# The chosen relative damping: the lowest training loss at the sweep's last epoch (the optimiser's own
# objective; the test split is what the table reports, so it does not choose; ties go to the first listed).
$(BEYOND_RUNS)/damping-%.txt:
	$(BIN)/report best --metric /train_loss --epochs $(BEYOND_DAMPING_EPOCHS) --print /optimizer/damping_value \
	  $^ < /dev/null > $@.tmp
	@mv $@.tmp $@

beyond-damping: build data
	$(call timed,$(MAKE) -k $(foreach f,$(BEYOND_FISHERS),$(BEYOND_RUNS)/damping-$(f).txt),beyond-damping runs)
	@$(MAKE) --no-print-directory beyond-damping-table
	@for f in $(BEYOND_FISHERS); do \
	  echo "ngd-exact, $$f Fisher: relative damping $$(cat $(BEYOND_RUNS)/damping-$$f.txt 2>/dev/null || echo '(none)')"; done

# Training loss at the sweep's last epoch, one block per Fisher, one row per damping.
.PHONY: beyond-damping-table
beyond-damping-table:
	$(BIN)/report table --metric /train_loss --epochs $(BEYOND_DAMPING_EPOCHS) --group /optimizer/fisher \
	  --label /optimizer/damping_value --baseline none \
	  --title "ngd-exact: training loss at epoch $(BEYOND_DAMPING_EPOCHS) against the relative damping ($(BEYOND_DAMPING_ARCH), seed $(BEYOND_DAMPING_SEED))" \
	  --out $(BEYOND_RESULTS)/damping $(call existing,$(BEYOND_DAMPING_RUNS)) < /dev/null > /dev/null

# ---- the noise level -------------------------------------------------------------------------------
$(BEYOND_RUNS)/noise-level.jsonl:
	@mkdir -p $(@D)
	$(BIN)/train --model $(BEYOND_NOISE_ARCH) --dataset mnist --data-dir $(DATA) --optimizer ngd \
	  --ngd-alpha $(BEYOND_NGD_ALPHA) --ngd-shadow-f64 --epochs $(BEYOND_NOISE_EPOCHS) --seed $(BEYOND_NOISE_SEED) \
	  $(samples_flag) --out $(BEYOND_RUNS)/noise-level --overwrite --run noise-level --variant ngd-f32-shadow --quiet > $@.tmp
	@rm -rf $(BEYOND_RUNS)/noise-level; mv $@.tmp $@

# R of the noise control: ‖d_f32 − d_f64‖/‖g‖ over all tensors, averaged over every step of the measurement.
$(BEYOND_RUNS)/noise-level.txt: $(BEYOND_RUNS)/noise-level.jsonl
	$(BIN)/report mean --metric /ngd_shadow_difference $< < /dev/null > $@.tmp
	@mv $@.tmp $@

beyond-noise-level: build data
	$(call timed,$(MAKE) $(BEYOND_RUNS)/noise-level.txt,beyond-noise-level run)
	@echo "noise level R = mean ‖d_f32 − d_f64‖/‖g‖ = $$(cat $(BEYOND_RUNS)/noise-level.txt)"

# ---- the table -------------------------------------------------------------------------------------
$(call beyond_runs_of,exact-empirical): $(if $(BEYOND_DAMPING_EMPIRICAL),,$(BEYOND_RUNS)/damping-empirical.txt)
$(call beyond_runs_of,exact-sampled): $(if $(BEYOND_DAMPING_SAMPLED),,$(BEYOND_RUNS)/damping-sampled.txt)
$(call beyond_runs_of,sgd-noise): $(if $(BEYOND_NOISE),,$(BEYOND_RUNS)/noise-level.txt)

# $(BEYOND_RUNS)/table/<dataset>/<model>/<variant>/s<seed>.jsonl: train, keep the records of the LLC epochs,
# estimate λ̂ on each, and the exact Hessian trace on the last one only (the checkpoint kept).
$(BEYOND_RUNS)/table/%.jsonl:
	$(if $(filter $(BEYOND_EPOCHS),$(BEYOND_LLC_EPOCHS)),,$(error BEYOND_LLC_EPOCHS ($(BEYOND_LLC_EPOCHS)) must include the last epoch $(BEYOND_EPOCHS)))
	@mkdir -p $(@D)
	@set -- $(subst /, ,$*); ds=$$1; arch=$$2; variant=$$3; seed=$${4#s}; dir=$(@D)/s$$seed; \
	case $$variant in \
	  sgd) opt="--optimizer sgd";; \
	  ngd-f32) opt="--optimizer ngd --ngd-alpha $(BEYOND_NGD_ALPHA)";; \
	  ngd-f64) opt="--optimizer ngd --ngd-alpha $(BEYOND_NGD_ALPHA) --ngd-dtype f64";; \
	  exact-empirical) opt="--optimizer ngd-exact --fisher empirical \
	    --damping-relative $(call beyond_damping,EMPIRICAL,empirical) $(BEYOND_EXACT_FLAGS)";; \
	  exact-sampled) opt="--optimizer ngd-exact --fisher sampled \
	    --damping-relative $(call beyond_damping,SAMPLED,sampled) $(BEYOND_EXACT_FLAGS)";; \
	  sgd-noise) opt="--optimizer sgd --direction-noise $(beyond_noise)";; \
	  *) echo "make: $@: unknown variant $$variant (known: sgd ngd-f32 ngd-f64 exact-empirical exact-sampled sgd-noise)" >&2; exit 1;; \
	esac; \
	last='"epoch":$(BEYOND_EPOCHS),'; \
	$(BIN)/train --model $$arch $$opt --dataset $$ds --data-dir $(DATA) --epochs $(BEYOND_EPOCHS) --seed $$seed \
	  $(samples_flag) --out $$dir --overwrite --run $$ds-$$arch-$$variant-s$$seed --variant $$variant --quiet \
	| grep -E '$(call epochs_re,$(BEYOND_LLC_EPOCHS))' \
	| $(BIN)/llc $(LLC_FLAGS) --draws $(BEYOND_LLC_DRAWS) --seed $$seed --data-dir $(DATA) --quiet > $@.llc.tmp; \
	{ grep -vF "$$last" $@.llc.tmp || true; \
	  grep -F "$$last" $@.llc.tmp | $(BIN)/hessian-trace --exact --data-dir $(DATA) --quiet; } > $@.tmp; \
	rm -f $@.llc.tmp; \
	find $$dir -name 'epoch-*' ! -name 'epoch-$(shell printf %04d $(BEYOND_EPOCHS)).*' -delete; \
	mv $@.tmp $@

beyond-table-runs: $(BEYOND_TABLE_RUNS)

# With SCHEDULER=slurm the stages are: the damping sweep and the noise-level run (those that the variants need and
# that are not given), then the choices made from them, then the table's runs; then the report.
beyond_need_damping = $(foreach f,$(BEYOND_FISHERS),$(if $(filter exact-$(f),$(BEYOND_VARIANTS)),$(if $(BEYOND_DAMPING_$(if $(filter empirical,$(f)),EMPIRICAL,SAMPLED)),,$(f))))
beyond_need_noise = $(if $(filter sgd-noise,$(BEYOND_VARIANTS)),$(if $(BEYOND_NOISE),,noise))
BEYOND_STAGE_1 = $(foreach f,$(beyond_need_damping),$(filter $(BEYOND_RUNS)/damping/$(f)-%,$(BEYOND_DAMPING_RUNS))) \
	$(if $(beyond_need_noise),$(BEYOND_RUNS)/noise-level.jsonl)
BEYOND_STAGE_2 = $(foreach f,$(beyond_need_damping),$(BEYOND_RUNS)/damping-$(f).txt) \
	$(if $(beyond_need_noise),$(BEYOND_RUNS)/noise-level.txt)

beyond-table: build data
	$(call sweep,$(BEYOND_RUNS)/sweep,beyond-table,beyond-table-runs,beyond-report,$(BEYOND_STAGE_1),$(BEYOND_STAGE_2),$(BEYOND_TABLE_RUNS))

# name:pointer of each table; λ̂ is averaged over the LLC epochs, everything else is the last epoch's.
BEYOND_METRICS := llc:/llc/llc trace:/hessian/trace test-loss:/test_loss test-acc:/test_acc train-loss:/train_loss \
	ngd-nan-fallbacks:/ngd_nan_fallbacks ngd-norm-ratio:/ngd_norm_ratio \
	$(foreach t,$(BEYOND_TENSORS),ngd-cosine-$(subst .,-,$(t)):/ngd_tensors/$(t)/cosine) \
	$(foreach t,$(BEYOND_TENSORS),ngd-rank-on-floor-$(subst .,-,$(t)):/ngd_tensors/$(t)/rank_on_floor) \
	exact-lambda:/ngd_exact_lambda exact-gram-condition-mean:/ngd_exact_gram_condition_mean \
	exact-gram-condition-max:/ngd_exact_gram_condition_max noise-ratio:/direction_noise_ratio

# One table per metric ($(BEYOND_RESULTS)/<name>.md, .json, .svg, .png; the diagnostics under diagnostics/),
# each variant against SGD (Welch's t, wins), all of them in summary.md.
beyond-report:
	@mkdir -p $(BEYOND_RESULTS)/diagnostics
	@runs="$(call existing,$(BEYOND_TABLE_RUNS))"; sum=$(BEYOND_RESULTS)/summary.md; \
	{ echo "# Beyond the paper: six optimisers from the same initialisations"; echo; \
	  echo "$(words $(BEYOND_SEEDS)) seeds, $(BEYOND_EPOCHS) epochs$(if $(TRAIN_SAMPLES), on the first $(TRAIN_SAMPLES) training samples); λ̂ averaged over epochs $(BEYOND_LLC_EPOCHS) ($(BEYOND_LLC_DRAWS) draws), every other number at epoch $(BEYOND_EPOCHS). Rows: mean ± sd over seeds; Welch's t and wins (seeds where the variant's value is higher) against sgd, paired by seed."; echo; \
	  echo "Relative damping of ngd-exact: empirical $(call beyond_damping,EMPIRICAL,empirical), sampled $(call beyond_damping,SAMPLED,sampled) ($(if $(BEYOND_DAMPING_EMPIRICAL)$(BEYOND_DAMPING_SAMPLED),given,lowest training loss of the sweep, damping.md)); $(BEYOND_EXACT_FLAGS). Noise control: R = $(beyond_noise) ($(if $(BEYOND_NOISE),given,mean ‖d_f32 − d_f64‖/‖g‖ of the online NGD measured by its f64 shadow))."; echo; \
	} > $$sum.tmp 2>/dev/null; \
	table() { echo "## $$1" >> $$sum.tmp; echo >> $$sum.tmp; \
	  if $(BIN)/report table --metric $$2 --epochs $$3 --group /dataset --group /model/name --label /variant \
	      --baseline $$4 $${5:+--title "$$5"} --out $$6 $$runs < /dev/null > /dev/null 2>$$6.err; then \
	    cat $$6.md >> $$sum.tmp; rm -f $$6.err; \
	  else echo "(no table: $$(cat $$6.err))" >> $$sum.tmp; rm -f $$6.err; fi; echo >> $$sum.tmp; }; \
	epochs_of() { if [ $$1 = llc ]; then echo $(call beyond_epochs,$(BEYOND_LLC_EPOCHS)); else echo $(BEYOND_EPOCHS); fi; }; \
	for m in $(BEYOND_METRICS); do \
	  name=$${m%%:*}; ptr=$${m#*:}; epochs=$$(epochs_of $$name); out=$(BEYOND_RESULTS)/$$name; \
	  case $$name in ngd-*|exact-*|noise-*) out=$(BEYOND_RESULTS)/diagnostics/$$name;; esac; \
	  table "$$name: $$ptr, epochs $$epochs" $$ptr $$epochs sgd "" $$out; \
	done; \
	for m in llc:/llc/llc trace:/hessian/trace test-loss:/test_loss; do \
	  name=$${m%%:*}; ptr=$${m#*:}; epochs=$$(epochs_of $$name); \
	  table "$$name against ngd-f32 (does the f64 state change it?): $$ptr, epochs $$epochs" $$ptr $$epochs ngd-f32 \
	    "" $(BEYOND_RESULTS)/$$name-vs-ngd-f32; \
	done; \
	mv $$sum.tmp $$sum
	@if [ -n "$(call existing,$(BEYOND_DAMPING_RUNS))" ]; then $(MAKE) --no-print-directory beyond-damping-table; fi
	@for m in llc trace test-loss test-acc; do echo "## $$m"; cat $(BEYOND_RESULTS)/$$m.md 2>/dev/null; done
	@echo "make: all tables in $(BEYOND_RESULTS)/summary.md"

# ---- the committed records ------------------------------------------------------------------------------
# The runs' records (a few kB each, no checkpoints), the damping and noise-level choices are kept in git under
# $(BEYOND_RECORDS), so that a fresh clone can rebuild the tables or continue the table where it stopped:
#   make beyond-save      copies them from $(BEYOND_RUNS) into $(BEYOND_RECORDS)
#   make beyond-restore   copies them back and marks the runs newer than their inputs, so make keeps them
BEYOND_RECORDS ?= $(BEYOND_RESULTS)/records
.PHONY: beyond-save beyond-restore
beyond-save:
	@mkdir -p $(BEYOND_RECORDS)
	@cd $(BEYOND_RUNS) && find . \( \( -path './table/*' -name 's*.jsonl' \) -o -path './damping/*.jsonl' -o -name 'damping-*.txt' \
	  -o -name 'noise-level.txt' -o -name 'noise-level.jsonl' \) ! -name '*.tmp' -print0 \
	  | xargs -0 -I{} sh -c 'mkdir -p "$(abspath $(BEYOND_RECORDS))/$$(dirname {})" && cp {} "$(abspath $(BEYOND_RECORDS))/{}"'
	@echo "make: $$(find $(BEYOND_RECORDS)/table -name 's*.jsonl' | wc -l) run records saved in $(BEYOND_RECORDS)"
beyond-restore:
	@mkdir -p $(BEYOND_RUNS)
	@cp -R $(BEYOND_RECORDS)/. $(BEYOND_RUNS)/
	@find $(BEYOND_RUNS)/damping $(BEYOND_RUNS)/noise-level.jsonl -exec touch {} + 2>/dev/null || true
	@touch $(BEYOND_RUNS)/damping-*.txt $(BEYOND_RUNS)/noise-level.txt 2>/dev/null || true
	@find $(BEYOND_RUNS)/table -name 's*.jsonl' -exec touch {} + 2>/dev/null || true
	@echo "make: $$(find $(BEYOND_RUNS)/table -name 's*.jsonl' | wc -l) run records restored into $(BEYOND_RUNS)"

# ---- the quick version -----------------------------------------------------------------------------
beyond-quick: build data
	$(call timed,$(MAKE) -k beyond-table BEYOND_RUNS=$(RUNS)/beyond-quick BEYOND_RESULTS=$(RESULTS)/beyond-quick \
	  BEYOND_SEEDS="1 2" BEYOND_EPOCHS=3 BEYOND_LLC_EPOCHS="2 3" TRAIN_SAMPLES=3000 BEYOND_LLC_DRAWS=100 \
	  BEYOND_DAMPINGS="1e-2 1" BEYOND_DAMPING_EPOCHS=2 BEYOND_NOISE_EPOCHS=1,beyond-quick)

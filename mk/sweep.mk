# Where the sweeps' runs run: on this machine (SCHEDULER=local, the default: make -j as before) or on a Slurm
# cluster (SCHEDULER=slurm: one job array per stage, submitted by scripts/sweep).
#
#   make paper-table SCHEDULER=slurm SLURM_PARTITION=cpu SLURM_TIME=2:00:00
#   make sweep-status        what is pending, running, failed (with its log) or not run, per stage (the task lists and
#                            logs are in <runs folder>/sweep/<target>/<stage>/)
#   make paper-table SCHEDULER=slurm   again: submits only the runs whose files are missing (the failed ones)
#
# Each sweep target (paper-table, paper-smoothing, paper-trace, paper-switch, paper-cnn, beyond-table, and the
# quick versions) is a list of stages; with Slurm, stage k is one job array whose task i runs `make <run file i>`
# with the same variables as the submitting make, each stage waits for the one before to succeed (afterok), and the
# report (tables, figures) runs once the last stage has ended however it ended (afterany), so it lists what is
# missing. A run's recipe is the same in both modes (train | llc | hessian-trace into a .tmp file, then renamed), so
# its outputs are the same files with the same bytes, wherever it ran. The folder (with the built tools in
# CARGO_TARGET_DIR and the data) must be on a file system the compute nodes share, as clusters' home and scratch
# file systems are.

SCHEDULER ?= local
# Passed to sbatch as --partition, --time, --cpus-per-task, --mem, --gres when set; SLURM_ARGS as they are.
SLURM_PARTITION ?=
SLURM_TIME ?=
SLURM_CPUS_PER_TASK ?= 1
SLURM_MEM ?=
SLURM_GRES ?=
SLURM_ARGS ?=
# At most this many tasks of one array at a time (sbatch --array=0-N%K), when set.
SLURM_ARRAY_LIMIT ?=
export SLURM_ARRAY_LIMIT

ifneq ($(filter-out local slurm,$(SCHEDULER)),)
$(error SCHEDULER=$(SCHEDULER): expected local or slurm)
endif

sbatch_args = $(strip $(if $(SLURM_PARTITION),--partition=$(SLURM_PARTITION)) $(if $(SLURM_TIME),--time=$(SLURM_TIME)) \
	--cpus-per-task=$(SLURM_CPUS_PER_TASK) $(if $(SLURM_MEM),--mem=$(SLURM_MEM)) $(if $(SLURM_GRES),--gres=$(SLURM_GRES)) \
	$(SLURM_ARGS))

# $(call sweep,DIR,NAME,LOCAL-TARGET,REPORT-TARGET,STAGE-1 FILES,STAGE-2 FILES,STAGE-3 FILES): a sweep's recipe;
# DIR/NAME/ holds its task lists and logs.
#   local: make -k LOCAL-TARGET (which depends on every run), then make REPORT-TARGET, as before.
#   slurm: a job array per non-empty stage for its missing files, each after the one before; then the report.
ifeq ($(SCHEDULER),slurm)
sweep_stage = j=$$(scripts/sweep submit --dir $(1) --name $(2) --stage $(3) --after "$$jid" \
	--sbatch "$(sbatch_args)" -- $(4)); jid=$${j:-$$jid};
define sweep
@jid=; $(if $(strip $(5)),$(call sweep_stage,$(1),$(2),1,$(5))) $(if $(strip $(6)),$(call sweep_stage,$(1),$(2),2,$(6))) \
	$(if $(strip $(7)),$(call sweep_stage,$(1),$(2),3,$(7))) \
	scripts/sweep submit --dir $(1) --name $(2) --stage report --after-any "$$jid" --phony \
	  --sbatch "$(sbatch_args)" -- $(4) > /dev/null; \
	echo "make: $(2) submitted to Slurm (task lists and logs in $(1)/$(2)/); follow it with: make sweep-status" >&2
endef
else
define sweep
$(call timed,$(MAKE) -k $(3),$(2) runs)
@$(MAKE) --no-print-directory $(4)
endef
endif

# Every sweep folder of the paper's and the beyond targets (pass the same PAPER_RUNS / BEYOND_RUNS as the
# submission: make sweep-status PAPER_RUNS=runs/quick).
.PHONY: sweep-status
sweep-status:
	@scripts/sweep status $(PAPER_RUNS)/sweep $(BEYOND_RUNS)/sweep

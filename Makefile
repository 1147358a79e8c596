# topK Dice research template. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp

LOSS    ?= ce_topk_dice
DATASET ?= phantom
# training recipe configs/experiment/$(EXPERIMENT).yaml: by default the dataset's own when it
# exists (configs/experiment/phantom.yaml); EXPERIMENT= (empty) trains with base.yaml's recipe
EXPERIMENT ?= $(if $(wildcard configs/experiment/$(DATASET).yaml),$(DATASET))
EXPERIMENT_CONFIG = $(if $(EXPERIMENT),--config configs/experiment/$(EXPERIMENT).yaml)
ARGS    ?=
DATA    ?=
# DATA=<DatasetXXX_Name or TaskXX_Name folder>: the nnU-Net / MSD datamodule on that folder
ifneq ($(DATA),)
override DATASET := nnunet
endif
CKPT    ?= last
SEEDS   ?=
# make compare FOLDS="0 1 2 3 4": cross-validation over nnU-Net folds (DATASET=nnunet)
FOLDS   ?=
LOSSES  ?= ce ce_dice focal_dice topk_ce_dice ce_topk_dice
K       ?= 5 10 20 50 100
INPUT   ?=
OUTPUT  ?= predictions
# make compare / sweep-k: LAUNCHER=inprocess|local|slurm, JOBS=N and RUNS_PER_GPU=k (local),
# SBATCH="<sbatch options>" and NO_WAIT=1 (slurm), OPTS="<more lightning_app.compare options>"
LAUNCHER ?= inprocess
JOBS    ?=
RUNS_PER_GPU ?=
SBATCH  ?=
NO_WAIT ?=
OPTS    ?=
LAUNCH_OPTS = --launcher $(LAUNCHER) $(if $(JOBS),--jobs $(JOBS)) $(if $(RUNS_PER_GPU),--runs-per-gpu $(RUNS_PER_GPU)) $(if $(SBATCH),--sbatch='$(SBATCH)') $(if $(NO_WAIT),--no-wait) $(OPTS)

# eval / predict: CKPT=last (default) takes the newest finished run of logs/$(RUN_DATASET)/$(LOSS)/
# (its fit_complete.json; unfinished runs are skipped with a line), CKPT=<path> a given .ckpt;
# both are checked to be complete files. DATA=<nnU-Net dataset folder>: runs are under
# logs/<folder name>/. The run's config.yaml next to the checkpoint's folder
# gives the dataset (else base + data + experiment + loss configs).
RUN_DATASET  = $(if $(DATA),$(notdir $(patsubst %/,%,$(DATA))),$(DATASET))
CHOOSE_CKPT  = $(PY) -m lightning_app.finished_runs --ckpt '$(CKPT)' --logs logs/$(RUN_DATASET)/$(LOSS)
BASE_CONFIGS = --config configs/base.yaml --config configs/data/$(DATASET).yaml $(EXPERIMENT_CONFIG) --config configs/loss/$(LOSS).yaml
RUN_CONFIGS  = cfg="$$(dirname "$$(dirname "$$ckpt")")/config.yaml"; \
	if [ -f "$$cfg" ]; then configs="--config $$cfg"; else configs="$(BASE_CONFIGS)"; fi

# LOSS=, LOSSES= and DATASET= must name files of configs/loss/ and configs/data/
LOSS_NAMES    = $(sort $(basename $(notdir $(wildcard configs/loss/*.yaml))))
DATASET_NAMES = $(sort $(basename $(notdir $(wildcard configs/data/*.yaml))))
check-loss    = $(if $(filter-out $(LOSS_NAMES),$(1)),$(error unknown LOSS '$(filter-out $(LOSS_NAMES),$(1))'; valid names: $(LOSS_NAMES)))
check-dataset = $(if $(filter-out $(DATASET_NAMES),$(DATASET)),$(error unknown DATASET '$(DATASET)'; valid names: $(DATASET_NAMES)))

.PHONY: help install test test-full test-slurm lint format train eval predict phantom-nifti compare sweep-k bench bench-losses bench-data bench-train bench-eval bench-grid clean

help: ## List every target with its description
	@if [ -t 1 ]; then on='\033[36m'; off='\033[0m'; else on=''; off=''; fi; \
	grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-14s%s %s\n", on, $$1, off, $$2}'
	@echo ""
	@echo "Variables: LOSS=$(LOSS) DATASET=$(DATASET) EXPERIMENT=$(EXPERIMENT) CKPT=$(CKPT) SEEDS=$(SEEDS) FOLDS='$(FOLDS)' LOSSES='$(LOSSES)' K='$(K)'"
	@echo "           INPUT= OUTPUT=$(OUTPUT) ARGS='<Lightning CLI overrides>'"
	@echo "           LAUNCHER=$(LAUNCHER) JOBS=$(JOBS) RUNS_PER_GPU=$(RUNS_PER_GPU) SBATCH='$(SBATCH)' NO_WAIT=$(NO_WAIT) OPTS='$(OPTS)'"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv/ and install the project with its dev extras (idempotent)

test: $(STAMP) ## Run the fast tests (installs first if needed)
	$(PY) -m pytest -m "not slow and not slurm" -q

test-full: $(STAMP) ## Run every test, the slow ones (DDP, resume, overfit) and the SLURM ones included
	scripts/slurm_local.sh install
	$(PY) -m pytest -q

test-slurm: $(STAMP) ## Run the SLURM tests on a single-node SLURM that they start (installs SLURM if missing, needs root)
	scripts/slurm_local.sh install
	$(PY) -m pytest -m slurm -q

lint: $(STAMP) ## Lint with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Format with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

train: $(STAMP) ## Train: make train LOSS=ce_topk_dice DATASET=phantom [EXPERIMENT=phantom] ARGS="--trainer.max_epochs=5" (or DATA=<nnU-Net/MSD dataset folder>)
	@: $(call check-loss,$(LOSS)) $(check-dataset)
	$(PY) -m lightning_app fit --config configs/base.yaml --config configs/data/$(DATASET).yaml $(EXPERIMENT_CONFIG) --config configs/loss/$(LOSS).yaml $(if $(DATA),--data.raw_dir=$(DATA)) $(ARGS)

eval: $(STAMP) ## Test a checkpoint (per_case.csv, summary.md, W&B): make eval CKPT=<run>/checkpoints/<file>.ckpt [ARGS="--model.test_protocol=transunet"]
	@: $(call check-loss,$(LOSS)) $(check-dataset)
	@ckpt="$$($(CHOOSE_CKPT) --for eval)" || exit 2; $(RUN_CONFIGS); \
	cmd="$(PY) -m lightning_app test $$configs --ckpt_path $$ckpt --trainer.default_root_dir=null $(ARGS)"; \
	echo "$$cmd"; exec $$cmd

predict: $(STAMP) ## Segment NIfTI volumes: make predict CKPT=<.ckpt> INPUT=<.nii.gz file or folder> OUTPUT=<folder>
	@: $(call check-loss,$(LOSS)) $(check-dataset)
	@ckpt="$$($(CHOOSE_CKPT) --for predict)" || exit 2; \
	cmd="$(PY) -m lightning_app.predict --ckpt $$ckpt --input $(INPUT) --output $(OUTPUT) $(ARGS)"; \
	echo "$$cmd"; exec $$cmd

phantom-nifti: $(STAMP) ## Export the phantom as NIfTI: test volumes in data/phantom-nifti/{images,labels}/, all as the nnU-Net dataset data/nnUNet_raw/Dataset900_Phantom
	$(PY) scripts/phantom_nifti.py --config configs/data/phantom.yaml --output data/phantom-nifti --nnunet-output data/nnUNet_raw

compare: $(STAMP) ## Train+test every loss x seed [x fold]; table, CSVs, plots in results/$(DATASET)/: make compare SEEDS=3 LOSSES="ce_dice ce_topk_dice" [REFERENCE=ce_dice] [FOLDS="0 1 2 3 4"] [LAUNCHER=local JOBS=2 | LAUNCHER=slurm SBATCH="--gres=gpu:1"]
	@: $(call check-loss,$(LOSSES)) $(check-dataset)
	$(PY) -m lightning_app.compare losses --dataset $(DATASET) --losses $(LOSSES) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(FOLDS),--folds $(FOLDS)) $(if $(REFERENCE),--reference "$(REFERENCE)") $(if $(DATA),--out results/$(RUN_DATASET)) $(LAUNCH_OPTS) -- $(if $(DATA),--data.raw_dir=$(DATA)) $(ARGS)

sweep-k: $(STAMP) ## CE + topK-Dice for each K; results/$(DATASET)/sweep_k.md: make sweep-k K="5 10 20 50 100"
	@: $(check-dataset)
	$(PY) -m lightning_app.compare sweep-k --dataset $(DATASET) --k $(K) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(REFERENCE),--reference "$(REFERENCE)") $(LAUNCH_OPTS) -- $(ARGS)

bench: $(STAMP) ## Run every bench-* script (scripts/bench_*.py) and write one report, results/bench.md
	$(PY) scripts/bench_all.py

bench-losses: $(STAMP) ## Time every loss preset against MONAI's DiceLoss and DiceCELoss (CPU)
	$(PY) scripts/bench_losses.py

bench-data: $(STAMP) ## Time preprocessing of a Synapse-sized case and the training loader's slices/s (CPU)
	$(PY) scripts/bench_data.py

bench-train: $(STAMP) ## Loss share of a training step per poster preset (phantom, Synapse-sized batch; CPU); --throughput: Trainer.fit vs bare step
	$(PY) scripts/bench_train.py

bench-grid: $(STAMP) ## Wall time of a 4-run local comparison grid with JOBS=1 and JOBS=2, and their ratio
	$(PY) scripts/bench_grid.py

bench-eval: $(STAMP) ## Time HD95 of one organ in a 100x512x512 volume against medpy's hd95 (CPU)
	$(PY) scripts/bench_eval.py

clean: ## Remove caches (keeps .venv, data and logs)
	rm -rf .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

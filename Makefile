# topK Dice research template. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp

LOSS    ?= ce_topk_dice
DATASET ?= phantom
ARGS    ?=
DATA    ?=
CKPT    ?= last
SEEDS   ?=
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

# eval / predict: CKPT=last (default) takes the newest logs/$(DATASET)/$(LOSS)/*/checkpoints/last.ckpt;
# the run's config.yaml next to the checkpoint's folder gives the dataset (else base + data + loss configs)
# (DATA=<nnU-Net dataset folder>: runs are under logs/<folder name>/)
RUN_DATASET = $(if $(DATA),$(notdir $(patsubst %/,%,$(DATA))),$(DATASET))
RUN_CKPT   = $(if $(filter last,$(CKPT)),$(firstword $(shell ls -t logs/$(RUN_DATASET)/$(LOSS)/*/checkpoints/last.ckpt 2>/dev/null)),$(CKPT))
RUN_CONFIG = $(abspath $(dir $(RUN_CKPT))../config.yaml)
EVAL_CONFIGS = $(if $(wildcard $(RUN_CONFIG)),--config $(RUN_CONFIG),--config configs/base.yaml --config configs/data/$(DATASET).yaml --config configs/loss/$(LOSS).yaml)

.PHONY: help install test test-full test-slurm lint format train eval predict phantom-nifti compare sweep-k bench bench-losses bench-data bench-train bench-eval bench-grid clean

help: ## List every target with its description
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'
	@echo ""
	@echo "Variables: LOSS=$(LOSS) DATASET=$(DATASET) CKPT=$(CKPT) SEEDS=$(SEEDS) LOSSES='$(LOSSES)' K='$(K)'"
	@echo "           INPUT= OUTPUT=$(OUTPUT) ARGS='<Lightning CLI overrides>'"
	@echo "           LAUNCHER=$(LAUNCHER) JOBS=$(JOBS) RUNS_PER_GPU=$(RUNS_PER_GPU) SBATCH='$(SBATCH)' NO_WAIT=$(NO_WAIT) OPTS='$(OPTS)'"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "from losses import native; print('top-K selection on the CPU:', native.describe())"
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

train: $(STAMP) ## Train: make train LOSS=ce_topk_dice DATASET=phantom ARGS="--trainer.max_epochs=5" (or DATA=<nnU-Net/MSD dataset folder>)
	$(PY) -m lightning_app fit --config configs/base.yaml --config configs/data/$(if $(DATA),nnunet,$(DATASET)).yaml --config configs/loss/$(LOSS).yaml $(if $(DATA),--data.raw_dir=$(DATA)) $(ARGS)

eval: $(STAMP) ## Test a checkpoint (per_case.csv, summary.md, W&B): make eval CKPT=<run>/checkpoints/<file>.ckpt [ARGS="--model.test_protocol=transunet"]
	@test -f "$(RUN_CKPT)" || { echo "make eval: no checkpoint '$(CKPT)' (give CKPT=<path to .ckpt>, or train first for CKPT=last)" >&2; exit 2; }
	$(PY) -m lightning_app test $(EVAL_CONFIGS) --ckpt_path $(RUN_CKPT) --trainer.default_root_dir=null $(ARGS)

predict: $(STAMP) ## Segment NIfTI volumes: make predict CKPT=<.ckpt> INPUT=<.nii.gz file or folder> OUTPUT=<folder>
	@test -f "$(RUN_CKPT)" || { echo "make predict: no checkpoint '$(CKPT)' (give CKPT=<path to .ckpt>)" >&2; exit 2; }
	$(PY) -m lightning_app.predict --ckpt $(RUN_CKPT) --input $(INPUT) --output $(OUTPUT) $(ARGS)

phantom-nifti: $(STAMP) ## Export the phantom as NIfTI: test volumes in data/phantom-nifti/{images,labels}/, all as the nnU-Net dataset data/nnUNet_raw/Dataset900_Phantom
	$(PY) scripts/phantom_nifti.py --config configs/data/phantom.yaml --output data/phantom-nifti --nnunet-output data/nnUNet_raw

compare: $(STAMP) ## Train+test every loss x seed; table, CSVs, plots in results/$(DATASET)/: make compare SEEDS=3 LOSSES="ce_dice ce_topk_dice" [LAUNCHER=local JOBS=2 | LAUNCHER=slurm SBATCH="--gres=gpu:1"]
	$(PY) -m lightning_app.compare losses --dataset $(DATASET) --losses $(LOSSES) $(if $(SEEDS),--seeds $(SEEDS)) $(LAUNCH_OPTS) -- $(ARGS)

sweep-k: $(STAMP) ## CE + topK-Dice for each K; results/$(DATASET)/sweep_k.md: make sweep-k K="5 10 20 50 100"
	$(PY) -m lightning_app.compare sweep-k --dataset $(DATASET) --k $(K) $(if $(SEEDS),--seeds $(SEEDS)) $(LAUNCH_OPTS) -- $(ARGS)

bench: $(STAMP) ## Run every bench-* script (scripts/bench_*.py) and write one report, results/bench.md
	$(PY) scripts/bench_all.py

bench-losses: $(STAMP) ## Time every loss preset against MONAI's DiceLoss and DiceCELoss (CPU)
	$(PY) scripts/bench_losses.py

bench-data: $(STAMP) ## Time preprocessing of a Synapse-sized case and the training loader's slices/s (CPU)
	$(PY) scripts/bench_data.py

bench-train: $(STAMP) ## Training-loop throughput: Trainer.fit vs the bare model step on the phantom
	$(PY) scripts/bench_train.py

bench-grid: $(STAMP) ## Wall time of a 4-run local comparison grid with JOBS=1 and JOBS=2, and their ratio
	$(PY) scripts/bench_grid.py

bench-eval: $(STAMP) ## Time HD95 of one organ in a 100x512x512 volume against medpy's hd95 (CPU)
	$(PY) scripts/bench_eval.py

clean: ## Remove caches (keeps .venv, data and logs)
	rm -rf .pytest_cache .ruff_cache **/__pycache__

# Two commands matter: `make pipeline` (the main job) and `make test`. Both create .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# glibc malloc returns every block over its mmap threshold (128 kB, adapted up to 32 MB) to the kernel when it
# is freed, so each CPU training step re-faults its activation buffers (EfficientNet-Lite0 at batch 64 x 224 px
# holds ~100 MB ones): measured 45,000-79,000 minor page faults per step. Raising both thresholds keeps freed
# memory in the heap (3,500 faults per step, system time /10; BENCHMARKS.md). Every target below (papermill's
# kernels, the CLI, tests) inherits it; the brainlib Jupyter kernel sets it too (see setup).
GLIBC_MALLOC := glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
export GLIBC_TUNABLES ?= $(GLIBC_MALLOC)

# Data: BRAIN_DATA_DIR when set; else the shared copy beside the repo when present; else kagglehub.
SHARED_DATA := $(abspath ../shared/data/brain-tumor-mri-dataset)
BRAIN_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/Training),$(SHARED_DATA),)
export BRAIN_DATA_DIR

# Pipeline parameters, passed to all five notebooks (override: make pipeline RUN=try EPOCHS=2).
# RECIPE names a preset in brainlib/config.py (RECIPES); empty: a new run trains config.DEFAULT_RECIPE and a
# run folder made by `python -m brainlib prepare --run-dir runs/x ...` keeps its settings. MODEL, EPOCHS,
# BATCH left empty take the recipe's values.
RUN ?= $(shell date +%Y%m%d-%H%M%S)
RECIPE ?=
MODEL ?=
EPOCHS ?=
BATCH ?=
DEVICE ?= auto
FAST ?= False
SEED ?= 42
RUN_DIR := runs/$(RUN)
NOTEBOOKS := $(sort $(wildcard notebooks/0*.ipynb))
# 01_data fixes the run's settings (writes config.json); 02-05 read them and take only the run folder
# (and a device for that notebook alone).
PREPARE_PARAMS := -p run_dir $(RUN_DIR) -p data_dir "$(BRAIN_DATA_DIR)" -p device $(DEVICE) -p fast $(FAST) -p seed $(SEED) \
	$(if $(RECIPE),-p recipe $(RECIPE) )$(if $(MODEL),-p model $(MODEL) )$(if $(EPOCHS),-p epochs $(EPOCHS) )$(if $(BATCH),-p batch_size $(BATCH) )
RUN_PARAMS := -p run_dir $(RUN_DIR) -p device $(DEVICE) 
# 04_evaluate's own switch: the label-quality audit trains the recipe once per fold (k=5), minutes on a GPU
# and hours on a CPU, so it is off unless asked: make pipeline LABEL_AUDIT=True
LABEL_AUDIT ?= False
# the shift suite: auto (all severities on every test image where that takes at most 20 min here, else the
# middle severity on a stratified 400-image sample, with intervals), 1,2,3 (always all), or '' (none)
SHIFTS ?= auto
EVALUATE_PARAMS := -p label_audit $(LABEL_AUDIT) -p shift_severities "$(SHIFTS)"
CLI_FLAGS := --device $(DEVICE) --seed $(SEED) $(if $(RECIPE),--recipe $(RECIPE)) $(if $(MODEL),--model $(MODEL)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH),--batch-size $(BATCH))

.PHONY: setup pipeline test bench evaluate compare audit-labels model-card readme-table figures docs-notebooks train-ddp lint lab tensorboard clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name brainlib --display-name "Python (brainlib)" > /dev/null
	@# the kernel's start-up notice about unencrypted local TCP is noise in every papermill run: log errors only;
	@# and the malloc thresholds above for kernels started from JupyterLab too
	$(PY) -c "import json, sys; p = sys.prefix + '/share/jupyter/kernels/brainlib/kernel.json'; k = json.load(open(p)); \
		k['argv'] += [a for a in ['--IPKernelApp.log_level=ERROR'] if a not in k['argv']]; \
		k['env'] = {**k.get('env', {}), 'GLIBC_TUNABLES': '$(GLIBC_MALLOC)'}; json.dump(k, open(p, 'w'), indent=1)"
	touch $(STAMP)

# papermill relays printed lines, not progress widgets: long loops print a line a minute instead
pipeline: export BRAIN_PROGRESS = lines
pipeline: $(STAMP)
	@mkdir -p $(RUN_DIR)/notebooks
	@set -e; run() { echo "== $$1 -> $(RUN_DIR)/notebooks/$$(basename $$1)"; \
		start=$$(date +%s); \
		$(VENV)/bin/papermill --kernel brainlib --cwd . --log-output --no-progress-bar "$$1" $(RUN_DIR)/notebooks/$$(basename $$1) "$${@:2}" 2>&1 \
			| grep --line-buffered -v -E "Executing Cell|Ending Cell|^\s*$$" ; test $${PIPESTATUS[0]} -eq 0; \
		echo "== $$(basename $$1) done in $$(( $$(date +%s) - start )) s"; }; \
	$(PY) -m brainlib plan --run-dir $(RUN_DIR) $(CLI_FLAGS) --fast $(FAST); \
	run notebooks/01_data.ipynb $(PREPARE_PARAMS); \
	for nb in $(filter-out notebooks/01_data.ipynb,$(NOTEBOOKS)); do \
		run $$nb $(RUN_PARAMS) $$([[ $$nb == *04_evaluate* ]] && echo "$(EVALUATE_PARAMS)"); done
	@echo; echo "Results: $(RUN_DIR)/  (executed notebooks in $(RUN_DIR)/notebooks/)"; \
	 echo "TensorBoard: make tensorboard  (or $(VENV)/bin/tensorboard --logdir runs)"

# Tests run on the tiny committed fixture (tests/fixtures/data), never on the real data,
# except tests/test_real_data.py, which checks the real dataset when it is present. The notebooks run
# first (nbval, into BRAIN_RUN_DIR); tests/test_pipeline_outputs.py then checks what they wrote.
TEST_TMP := $(shell mktemp -u /tmp/brainlib-test.XXXXXX)
test: $(STAMP)
	$(VENV)/bin/ruff check brainlib tests notebooks scripts
	$(VENV)/bin/ruff format --check brainlib tests scripts
	mkdir -p $(TEST_TMP)
	BRAIN_DATA_DIR=$(CURDIR)/tests/fixtures/data BRAIN_RUN_DIR=$(TEST_TMP)/run BRAIN_CACHE_DIR=$(TEST_TMP)/cache \
	BRAIN_FAST=1 BRAIN_REAL_DATA_DIR="$(BRAIN_DATA_DIR)" \
		$(PY) -m pytest -q --nbval-lax notebooks tests; \
	status=$$?; rm -rf $(TEST_TMP); exit $$status

# The committed default model, named once in brainlib/config.py
DEFAULT_CHECKPOINT := $(shell sed -n 's/^DEFAULT_CHECKPOINT = "\(.*\)"/\1/p' brainlib/config.py)

# Score a checkpoint on the official Testing split (default: the committed default model; the full shift
# suite takes most of the time): make evaluate [CHECKPOINT=checkpoints/seed_cnn.pt]
CHECKPOINT ?= $(DEFAULT_CHECKPOINT)
evaluate: $(STAMP)
	$(PY) -m brainlib evaluate --checkpoint $(CHECKPOINT) --run-dir runs/eval-$(basename $(notdir $(CHECKPOINT)))

# The label-quality audit of a prepared run (k fine-tunes of its recipe): make audit-labels RUN=<run> [FOLDS=5]
FOLDS ?= 5
audit-labels: $(STAMP)
	$(PY) -m brainlib audit-labels --run-dir $(RUN_DIR) --folds $(FOLDS)

# The committed default checkpoint's model card, from its evaluation run (make evaluate CHECKPOINT=...) and,
# when present, a label audit: make model-card [AUDIT_RUN=runs/label-audit]
AUDIT_RUN ?= docs/label_audit/ensemble
OOD_REPORT ?= docs/ood/report.json
model-card: $(STAMP)
	$(PY) -m brainlib model-card --checkpoint $(DEFAULT_CHECKPOINT) --eval-run runs/eval-$(basename $(notdir $(DEFAULT_CHECKPOINT))) \
		$(if $(AUDIT_RUN),--audit-run $(AUDIT_RUN)) $(if $(OOD_REPORT),--ood-report $(OOD_REPORT)) --out docs/MODEL_CARD.md

# The front door's numbers and figures, regenerated from committed files (no training, no data needed)
readme-table: $(STAMP)
	$(PY) -m brainlib results-table --update README.md
figures: $(STAMP)
	$(PY) -m brainlib figures $(if $(wildcard runs/eval-$(basename $(notdir $(DEFAULT_CHECKPOINT)))/predictions.csv),--eval-run runs/eval-$(basename $(notdir $(DEFAULT_CHECKPOINT))))
	$(PY) scripts/draw_imports.py --out docs/figures/package.png

# The executed notebooks of one default run, with their outputs, for readers on GitHub:
# make pipeline RUN=default && make docs-notebooks RUN=default
docs-notebooks:
	test -f $(RUN_DIR)/notebooks/05_gradcam.ipynb || { echo "run make pipeline RUN=$(RUN) first"; exit 2; }
	mkdir -p docs/notebooks && cp $(RUN_DIR)/notebooks/0*.ipynb docs/notebooks/
	$(PY) scripts/compact_notebooks.py --run-dir $(RUN_DIR) docs/notebooks/*.ipynb

# The comparison table (markdown) of every evaluated run folder: make compare [RUNS="runs/a runs/b"]
RUNS ?= $(dir $(wildcard runs/*/metrics.json))
compare: $(STAMP)
	$(PY) -m brainlib compare $(RUNS) --shifts

# Data-parallel training under torchrun (NCCL on GPUs, gloo on CPU); BATCH is per process. On one machine:
# make train-ddp NPROC=4 RUN=ddp. Across machines: the same command on every node with NNODES and RDZV (the
# first node's host:port); each node needs the data (BRAIN_DATA_DIR) and the run folder's manifest.csv and
# config.json (prepare on one node, copy the two files); each builds its own image cache (docs/reproduce.md).
NPROC ?= 2
NNODES ?= 1
RDZV ?=
TORCHRUN_NODES := $(if $(RDZV),--nnodes=$(NNODES) --rdzv-backend=c10d --rdzv-endpoint=$(RDZV) --rdzv-id=$(RUN),--standalone)
train-ddp: $(STAMP)
	test -f $(RUN_DIR)/manifest.csv || $(PY) -m brainlib prepare --run-dir $(RUN_DIR) $(CLI_FLAGS)
	$(VENV)/bin/torchrun $(TORCHRUN_NODES) --nproc_per_node=$(NPROC) -m brainlib train --run-dir $(RUN_DIR) --device $(DEVICE) --resume

# Throughput of the plain pipeline vs brainlib's on the real data, in one process (a benchmark, not a test).
BENCH_RUN ?= runs/bench
BENCH_STEPS ?= 4
bench: $(STAMP)
	test -f $(BENCH_RUN)/manifest.csv || $(PY) -m brainlib prepare --run-dir $(BENCH_RUN)
	$(PY) -m brainlib bench --run-dir $(BENCH_RUN) --steps $(BENCH_STEPS) --out $(BENCH_RUN)/bench.json

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix brainlib tests notebooks scripts
	$(VENV)/bin/ruff format brainlib tests scripts

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs

clean-venv:
	rm -rf $(VENV)

# seg_gan developer commands; `make help` lists them.
PYTHON ?= python
CAMVID ?=

.PHONY: help install test test-slow test-all lint format train debug bench-data bench-step bench-inference bench-gpu bench-gpu-session bench-semi bench-semi-table bench-ops clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install:  ## install the project and the dev tools (editable)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## run the test suite (the README's command: the slow tests deselected, 4.5-7 minutes on 2 cores)
	$(PYTHON) -m pytest

test-slow:  ## run only the tests marked slow (10-15 minutes on 2 cores)
	$(PYTHON) -m pytest -m slow

test-all:  ## run every test, slow ones included, in one pass (CI runs the same tests in two)
	$(PYTHON) -m pytest -m ""

lint:  ## ruff lint and format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## apply ruff formatting and autofixes
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

train:  ## the embedded default run (synthetic street scenes, CPU ok, a few minutes)
	$(PYTHON) -m seg_gan fit

debug:  ## a seconds-long smoke run of fit + validation + checkpointing
	$(PYTHON) -m seg_gan fit --config configs/debug.yaml

bench-data:  ## data-loading benchmark (PNG decode vs full pipeline)
	$(PYTHON) -m seg_gan.bench data

bench-step:  ## training-step benchmark (seg_gan vs bare loop, adversary cost in time and FLOPs)
	$(PYTHON) -m seg_gan.bench step

bench-inference:  ## inference benchmark (whole image vs sliding window at full resolution)
	$(PYTHON) -m seg_gan.bench inference

bench-gpu:  ## GPU training step: variants, repeats, TFLOP/s and MFU against the measured matmul (needs CUDA)
	$(PYTHON) -m seg_gan.bench gpu

bench-gpu-session:  ## every GPU measurement of issue 18 in one call, within BUDGET s (520), results in bench_results/
	bash seg_gan/bench/gpu_session.sh

bench-semi:  ## the CamVid 1/16 semi-supervised grid (semi_grid.sh): make bench-semi CAMVID=/path/to/CamVid
	@test -n "$(CAMVID)" || (echo "error: give the CamVid folder: make bench-semi CAMVID=/path/to/CamVid" >&2; exit 2)
	bash seg_gan/bench/semi_grid.sh "$(CAMVID)" 1-16

bench-semi-table:  ## the semi-supervised study's tables, from the committed result files (no data needed)
	$(PYTHON) -m seg_gan.bench semi --table-only

bench-ops:  ## aten ops (about one GPU kernel each) and FLOPs per batch of each semi-study arm: make bench-ops CAMVID=...
	@test -n "$(CAMVID)" || (echo "error: give the CamVid folder: make bench-ops CAMVID=/path/to/CamVid" >&2; exit 2)
	$(PYTHON) -m seg_gan.bench ops --root="$(CAMVID)"

clean:  ## remove run outputs and caches in this folder
	rm -rf runs lightning_logs wandb .pytest_cache .ruff_cache

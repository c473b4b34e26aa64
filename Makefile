# `make demo` and `make test` each set everything up on a machine with only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch is pinned and installed first; an unpinned torch would pull GBs of CUDA packages.
# On a GPU machine: make setup TORCH=torch==2.13.0 (or the build matching your CUDA).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/alignkit run experiments/sft_tiny.yaml
	$(BIN)/alignkit run experiments/reward_model_tiny.yaml
	$(BIN)/alignkit run experiments/dpo_tiny.yaml
	$(BIN)/alignkit run experiments/kto_tiny.yaml
	$(BIN)/alignkit run experiments/grpo_tiny.yaml

lint: setup
	$(BIN)/ruff check alignkit tests benchmarks

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

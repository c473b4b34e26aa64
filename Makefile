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

# SFT -> reward model -> PPO, GRPO, ReMax, REINFORCE, rejection sampling, DPO, KTO on the sentiment testbed, each
# method over 3 seeds, two runs at a time; then every policy judged by the true reward on the same held-out
# prompts, with 95% intervals over seeds.
demo: setup
	$(BIN)/alignkit compare experiments/compare_sentiment.yaml --jobs 2

lint: setup
	$(BIN)/ruff check alignkit tests benchmarks

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

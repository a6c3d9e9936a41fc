# The two commands of the README: `make quickstart` (set up, then train the digits quickstart) and
# `make test` (set up, then run the test suite). Both install into .venv with the pinned versions.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup quickstart test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt $(wildcard setup.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,deepspeed,detection,vl,privacy]'
	touch $@

quickstart: setup
	$(BIN)/python tools/train.py configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check vfm tools benchmarks tests

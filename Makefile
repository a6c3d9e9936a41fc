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

# One pytest-xdist worker per core, at most 2 (CI has 2 cores); `make test TEST_WORKERS=0` runs in one process.
# --dist loadgroup keeps the multi-process tests on one worker, one at a time (see tests/conftest.py).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(2, len(os.sched_getaffinity(0))))' 2>/dev/null || echo 2)

test: setup
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	$(BIN)/ruff check vfm tools benchmarks tests

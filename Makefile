# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Both create ./.venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/artifex-rl train cartpole-ppo --run-dir $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check artifex_rl tests bench examples

bench: $(STAMP)
	$(PY) bench/trainer_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache

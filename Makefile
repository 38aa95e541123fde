# Two entry points: `make demo` (the main job) and `make test` (the suite); `make docs` builds the site.
# Both create ./.venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
RUN_DIR ?= runs/demo

.PHONY: demo test docs lint bench clean venv

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

# The documentation site (mkdocs + Material + mkdocstrings) into site/; any warning fails it.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check artifex_rl tests bench examples

bench: $(STAMP)
	$(PY) bench/trainer_overhead.py

clean:
	rm -rf $(VENV) runs site .pytest_cache

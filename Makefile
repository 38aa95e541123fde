# Two entry points: `make demo` (the main job) and `make test` (the suite); `make docs` builds the site.
# Both create ./.venv on first use and reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
RUN_DIR ?= runs/demo

.PHONY: demo test docs lint bench bench-envs clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/artifex-rl train cartpole-ppo --run-dir $(RUN_DIR)

# Two pytest-xdist workers, one test file each at a time (module fixtures stay in one worker): the suite is
# mostly single-threaded XLA compilation, so on 2 cores this takes ~21 min instead of ~30.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20 tests

# The documentation site (mkdocs + Material + mkdocstrings) into site/; any warning fails it.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check artifex_rl tests bench examples

# `make bench`: every benchmark in bench/ (about an hour on 2 CPU cores; BENCH_ARGS=--quick for minutes),
# tables in bench/results/report.md. The peer libraries live in bench-only venvs, never in ours:
# avitai-artifex pulls TensorFlow, rejax wants gymnax<1.0, TRL torch.
BENCH_ENVS := .bench-envs
BENCH_ARGS ?=

$(BENCH_ENVS)/artifex/.installed:
	$(PYTHON) -m venv $(BENCH_ENVS)/artifex
	$(BENCH_ENVS)/artifex/bin/pip install --quiet --upgrade pip
	$(BENCH_ENVS)/artifex/bin/pip install --quiet "avitai-artifex==0.1.3"
	touch $@

$(BENCH_ENVS)/rejax/.installed:
	$(PYTHON) -m venv $(BENCH_ENVS)/rejax
	$(BENCH_ENVS)/rejax/bin/pip install --quiet --upgrade pip
	$(BENCH_ENVS)/rejax/bin/pip install --quiet "rejax==0.1.3" "gymnax<1.0"
	touch $@

# TRL on torch's CPU wheels (the default torch wheel pulls CUDA).
$(BENCH_ENVS)/trl/.installed:
	$(PYTHON) -m venv $(BENCH_ENVS)/trl
	$(BENCH_ENVS)/trl/bin/pip install --quiet --upgrade pip
	$(BENCH_ENVS)/trl/bin/pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(BENCH_ENVS)/trl/bin/pip install --quiet trl transformers
	touch $@

$(BENCH_ENVS)/tunix/.installed:
	$(PYTHON) -m venv $(BENCH_ENVS)/tunix
	$(BENCH_ENVS)/tunix/bin/pip install --quiet --upgrade pip
	$(BENCH_ENVS)/tunix/bin/pip install --quiet "google-tunix==0.1.7"
	touch $@

bench-envs: $(BENCH_ENVS)/artifex/.installed $(BENCH_ENVS)/rejax/.installed $(BENCH_ENVS)/trl/.installed \
	$(BENCH_ENVS)/tunix/.installed

bench: $(STAMP) bench-envs
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_ENVS) runs site .pytest_cache

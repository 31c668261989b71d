# lvm-study — two commands: `make run` (the study) and `make test` (the suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PARAMS ?= params/default.yaml
ARGS   ?=
# Big-tensor CPU speed-up measured in benchmarks/ (glibc malloc keeps large blocks instead of mmap/munmap).
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

LAB_PORT ?= 8888
# `make scaling`: one run per training-set size on the same held-out articles of a JSONL corpus.
CORPUS  ?= corpora/wiki_dev_1000.jsonl.gz
SIZES   ?= 100,300,800

.PHONY: setup run lab test test-fast lint format study scaling confirm bench clean-runs help

help:
	@echo "make run [PARAMS=params/x.yaml] [ARGS='--set train.epochs=3']   run the study"
	@echo "make lab [LAB_PORT=8888]                                       JupyterLab on 127.0.0.1 (token printed)"
	@echo "make test                                                      lint, then the test suite"
	@echo "make format                                                    ruff: fix what it can, format"
	@echo "make study                                                     V1 vs V2 comparison (<= 30 min)"
	@echo "make scaling [CORPUS=x.jsonl.gz] [SIZES=100,300,800]          scaling curve (hours on a CPU)"
	@echo "make confirm [STUDY=params/confirm.yaml]                      the confirmatory study (resumable; ~a day on a CPU)"
	@echo "make bench                                                     benchmarks/ (prints tables)"

setup: $(STAMP)

# -qq: pip's errors still show, its chatter (and a site's index warnings) does not: a calm first `make run`.
$(STAMP): requirements.lock pyproject.toml
	@echo "[lvm-study] setting up $(VENV): the pinned stack of requirements.lock, JupyterLab included (minutes the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -qq --disable-pip-version-check -r requirements.lock
	@$(PY) -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(PY) -m ipykernel install --sys-prefix --name lvm-study --display-name "lvm-study (.venv)" >/dev/null
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m lvmlib run $(PARAMS) $(ARGS)

lab: $(STAMP)
	$(PY) -m lvmlib lab --port $(LAB_PORT)

test: lint
	$(PY) -m pytest -q tests $(ARGS)

# The house rules: lint and format (ruff), the layers and no import cycles (import-linter, pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check lvmlib tests benchmarks tools
	$(VENV)/bin/ruff format --check lvmlib tests benchmarks tools
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix lvmlib tests benchmarks tools
	$(VENV)/bin/ruff format lvmlib tests benchmarks tools

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests $(ARGS)

study: $(STAMP)
	$(PY) -m lvmlib study $(ARGS)

scaling: $(STAMP)
	$(PY) -m lvmlib scaling $(PARAMS) --corpus $(CORPUS) --articles $(SIZES) $(ARGS)

confirm: $(STAMP)
	$(PY) -m lvmlib confirm $(or $(STUDY),params/confirm.yaml) $(ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs reports/*/ reports/index.html

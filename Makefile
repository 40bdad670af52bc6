# Two commands set everything up: `make run` (the notebook series) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint lab bench clean

$(STAMP): pyproject.toml
	@bash .ci/install-system-blas
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

## run: execute every notebook headless (default mode); results land in outputs/
run: $(STAMP)
	$(PY) -m diffusion_utils notebooks --out outputs

## test: lint, then the whole test suite (notebooks in fast mode)
test: $(STAMP)
	$(PY) -m ruff check .
	TUTORIAL_FAST=1 $(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

## lab: open the notebooks in JupyterLab
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## bench: MLX (and PyTorch, if installed) speed on this machine
bench: $(STAMP)
	$(PY) -m diffusion_utils bench

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

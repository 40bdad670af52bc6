# Two commands set everything up: `make run` (the notebook series) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
comma := ,
# MLX backend extra on Linux: cpu (default) or cuda (`make MLX_BACKEND=cuda test`); none on macOS.
MLX_BACKEND ?= $(if $(filter Linux,$(shell uname -s)),cpu,)
EXTRAS := dev$(if $(MLX_BACKEND),$(comma)$(MLX_BACKEND),)

.PHONY: run test lint lab bench clean git-filter

$(STAMP): pyproject.toml
	@bash .ci/install-system-blas
	@$(MAKE) --no-print-directory git-filter
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

## run: execute every notebook headless (default mode), then paint a gallery with the shipped 64 px
## latent model; results land in outputs/
run: $(STAMP)
	$(PY) -m diffusion_utils notebooks --out outputs
	$(PY) -m diffusion_utils sample --checkpoint data/pretrained/latent64 --n 54 --out outputs/latent64_gallery.png

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

## git-filter: notebooks enter git without outputs or the metadata JupyterLab rewrites (.gitattributes)
git-filter:
	@git rev-parse --git-dir >/dev/null 2>&1 && git config filter.notebook.clean "python3 .ci/clean-notebook" \
	  || echo "NOTE: not a git checkout; the notebook filter is not installed"

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

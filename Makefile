# Two commands matter: `make demo` (the product on the embedded shapes model) and `make test`.
# Both create .venv and install what they need on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow lint build-model sample-grid clean

# The project is installed editable (`pip install -e .`): its dependencies are pyproject.toml's, at the known-good
# versions of constraints.txt; torch first, so that the pin picks this machine's build (CPU here, CUDA on a GPU box).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m app demo

test: setup
	bash scripts/test.sh

test-slow: setup
	bash scripts/test.sh -m slow

lint: setup
	$(VENV)/bin/ruff check .

# Rebuild the embedded model from scratch (93 minutes measured alone on 2 CPU cores with the build defaults: 76 for the build
# without the UNet refinement, 17 for the refinement; README.md, "The embedded shapes model"; BENCHMARKS.md).
build-model: setup
	$(PY) -m seiko_core.toy build --out models/shapes-sd

sample-grid: setup
	$(PY) -m seiko_core.sample --model models/shapes-sd --n 32 --seed 0 --cols 8 --out docs/images/shapes-grid.png \
	  --prompt "a large red circle on a white background" --prompt "a blue square on a black background" \
	  --prompt "a green triangle on a gray background" --prompt "a yellow star on a black background" \
	  --prompt "a purple circle" --prompt "a small orange square" --prompt "a shape" --prompt "a large triangle"

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info

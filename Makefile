# Single entry point. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
WM     := $(VENV)/bin/wm
# Without an NVIDIA GPU install the CPU build of torch (a plain `torch` pulls a multi-GB CUDA build).
# Override, e.g. `make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH  ?= $(if $(HAS_GPU),torch,torch==2.13.0)
SEED   ?= 0
PYGAME := $(shell sed -n 's/^ *\(pygame==[0-9.]*\)$$/\1/p' setup.cfg)
DATA   ?= data
RESULTS ?= results
WORKERS ?= 2

SEEDS  ?= 0 1 2

.PHONY: install test test-slow test-faults lint format bench demo demo-carracing compare clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,ray,interop,tensorboard]'
	@# gymnasium[box2d] needs pygame, vizdoom pygame-ce, both install into pygame/ and draw CarRacing's frames
	@# differently: keep pygame, whatever the install order was (vizdoom never imports it)
	$(PY) -m pip uninstall -q -y pygame-ce pygame
	$(PY) -m pip install -q --no-deps $(PYGAME)
	@touch $@

test: install
	$(PY) -m pytest -q -x --durations=10

test-slow: install
	$(PY) -m pytest -q -m slow

test-faults: install
	$(PY) -m pytest -q -m "faults or not faults" --durations=15 tests/test_faults.py tests/test_faults_kill.py tests/test_faults_doom.py

lint: install
	$(VENV)/bin/ruff check worldmodels_cli tests benchmarks scripts

format: install
	$(VENV)/bin/ruff format worldmodels_cli tests benchmarks scripts

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# seed 0's table and pictures go to results/demo*/, another seed's to results/demo*-seedN/ (none overwrites another)
SEED_SUFFIX = $(if $(filter 0,$(SEED)),,-seed$(SEED))
# `make demo PRESET=medium`: Doom's medium preset (≤ 4 h) in its own folders
PRESET ?= small
PRESET_SUFFIX = $(if $(filter small,$(PRESET)),,-$(PRESET))

demo: install
	$(WM) demo --preset $(PRESET) --data $(DATA)/demo$(PRESET_SUFFIX)-seed$(SEED) \
	  --results $(RESULTS)/demo$(PRESET_SUFFIX)$(SEED_SUFFIX) --seed $(SEED) --workers $(WORKERS)

demo-carracing: install
	$(WM) demo --env carracing --data $(DATA)/demo-carracing-seed$(SEED) --results $(RESULTS)/demo-carracing$(SEED_SUFFIX) \
	  --seed $(SEED) --workers $(WORKERS)

# MDN-RNN/RSSM x CMA-ES/actor-critic on small Doom, the same data and real episodes (docs/world_models_compared.md)
compare: install
	$(WM) compare --env doom --preset small --seeds $(shell echo $(SEEDS) | tr ' ' ',') --episodes 100 \
	  --data $(DATA)/compare --results $(RESULTS)/compare --workers $(WORKERS)

include reproduce.mk

clean:
	rm -rf $(VENV) build *.egg-info

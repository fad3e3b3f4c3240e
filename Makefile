# One-command entry points. Every target sets up its own virtual environment first (idempotent).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU machines: the local torch wheel; GPU users may preinstall their own torch into the venv.
TORCH   ?= torch==2.13.0

.PHONY: setup demo test bench clean

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## Main job: the closed-loop demo (sim + policy node as two processes over DDS, the bundled tiny_reach policy).
demo: setup
	$(BIN)/python -m sim.demo --episodes 10 --out out/demo

## The test suite (CPU, no ROS install needed).
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/bench_model.py
	$(BIN)/python bench/bench_runtime.py
	$(BIN)/python bench/bench_middleware.py
	$(BIN)/python bench/bench_sim.py --episodes 10

clean:
	rm -rf $(VENV) build *.egg-info

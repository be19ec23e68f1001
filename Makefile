# pagedllm — `make test` creates .venv if missing, installs everything and runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Downloads and the unpacked tritonserver stay in this checkout (an installed pagedllm keeps them
# in ~/.cache/pagedllm); the dev tools in scripts/ are not installed, so they go on the path.
export PAGEDLLM_CACHE ?= $(CURDIR)/.cache
export PYTHONPATH := $(CURDIR)/scripts$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: test install model serve bench-engine clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The default model is committed (models/default); this rebuilds it from scratch, offline.
model: $(STAMP)
	$(PY) -m pagedllm_tools.default_model --out models/default

# `pagedllm serve` in the foreground on 127.0.0.1 (a real tritonserver, the nvidia-pytriton wheel's):
# make serve MODEL=/path/to/hf_dir ARGS='--port 8010 --max-model-len 4096'
# (`.venv/bin/pagedllm serve --help` lists every flag; MODEL, ENGINE_ARGS, OPENAI_PORT, HTTP_PORT,
# GRPC_PORT, METRICS_PORT and HOST in the environment still give the defaults).
serve: $(STAMP)
	$(PY) -m pagedllm_triton.serving.cli serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench-engine: $(STAMP)
	$(PY) -m pagedllm_tools.bench.engine

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Two commands do all the set-up on a fresh machine:
#   make serve   install what is missing, serve the bundled models on 127.0.0.1:8000
#                (another port: LSRCNN_PORT=8001 make serve)
#   make test    install what is missing, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test lint k8s triton image bench figure clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Serving install: no torch (the `cpu` extra brings onnxruntime).
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[cpu]"
	touch $@

# Everything: serving, training (torch 2.13.0, CPU build where available) and test tools.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[cpu,train,dev]"
	touch $@ $(VENV)/.serve-installed

# The port first: a taken one stops here, before any install.
serve:
	@$(PYTHON) -m app.ports
	@$(MAKE) --no-print-directory $(VENV)/.serve-installed
	$(BIN)/python -m app

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

# Render every Kubernetes overlay and check it against the schemas, offline.
k8s: $(VENV)/.dev-installed
	$(BIN)/python -m deploy.validate

# A Triton model repository of the bundled models in triton-repo/ (DEVICE=gpu for GPU instances).
DEVICE ?= cpu
triton: $(VENV)/.serve-installed
	$(BIN)/python -m model.triton_repo triton-repo --device $(DEVICE)

# The container image (FLAVOR=gpu for the GPU one), with or without Docker Hub.
image:
	scripts/build_image.sh

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.load

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

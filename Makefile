# Two commands get a newcomer going: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The torch build that lies on this machine's disk; on a GPU host override, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Debian packages some tests need (nginx: tests/deploy/test_reverse_proxy.py; chromium: tests/browser, driven by Playwright);
# installed by `make test` when run as root, otherwise those tests skip and say how to install them.
SYSTEM_PACKAGES ?= nginx chromium

.PHONY: install install-dev system-packages serve test docs figures bench lock lint typecheck clean train-gpu gpu-wheels gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e .
	touch $@

# facenet-pytorch: MTCNN's source, for its parity test and scripts/convert_mtcnn.py only (the service loads the
# converted weights), installed without its published pins of old torch, numpy and Pillow.
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $@

install: $(VENV)/.installed  ## create .venv and install the service

install-dev: $(VENV)/.installed-dev  ## .venv plus training and test extras

serve: install  ## serve the checkpoints in weights/ on $(HOST):$(PORT)
	$(BIN)/python -m app --host $(HOST) --port $(PORT) --timeout-graceful-shutdown 30

system-packages:  ## apt-get install $(SYSTEM_PACKAGES) as root; otherwise say loudly which tests will skip
	bash scripts/ensure-system-packages.sh $(SYSTEM_PACKAGES)

lint: install-dev  ## ruff (lint and format check) over the code and tests
	$(BIN)/ruff check app training bench tests deploy scripts
	$(BIN)/ruff format --check app training bench tests deploy scripts

typecheck: install-dev  ## mypy (pinned; its configuration is pyproject.toml's [tool.mypy]) over the service and training
	$(BIN)/mypy app training

test: install-dev system-packages lint typecheck  ## lint and type check, then the whole test suite (the docs site's strict build among it)
	$(BIN)/python -m pytest -q

# NO_MKDOCS_2_WARNING: Material prints a banner about its successor on every build; it is not a problem with the docs.
docs: install-dev  ## build the documentation site (mkdocs.yml, docs/) into .cache/site; a broken link fails it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

figures: install-dev  ## regenerate the docs' figures and the page screenshot from weights/ (serves them on $(PORT) meanwhile)
	PYTHON=$(BIN)/python PORT=$(PORT) bash docs/make_figures.sh

bench: install-dev  ## benchmark a running server: make bench URL=http://127.0.0.1:8000
	$(BIN)/python -m bench --url $(or $(URL),http://$(HOST):$(PORT))

lock: install-dev  ## rewrite requirements/service.lock (exact versions and hashes the Docker image installs)
	$(BIN)/python scripts/service_requirements.py > requirements/service.in
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-header -o requirements/service.lock requirements/service.in

train-gpu: install-dev  ## train every recipe on this host's GPU(s), TRAIN_GPU_SECONDS (default 120) each, from the packed faces
	bash scripts/train_gpu.sh

gpu-wheels:  ## download the service's packages as Python 3.12 wheels into .gpu-wheels/, for an offline GPU host
	PYTHON=$(PYTHON) bash scripts/gpu_wheels.sh

gpu-check:  ## the GPU acceptance check (docs/gpu.md): installs .gpu-wheels/ offline if present; report gpu_check.json
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

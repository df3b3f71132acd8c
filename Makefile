# The project's commands. A fresh machine needs only Python 3.11 and make:
#   make serve   create the venv, install, train the models the store lacks, serve on 127.0.0.1:3000
#   make test    create the venv, install, run the whole test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000
METRICS_PORT ?= 8002

# No usage analytics from anything this project starts.
export BENTOML_DO_NOT_TRACK := true

.PHONY: help install system-deps train serve test test-fast lint format constraints clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The venv is rebuilt when the declared or pinned dependencies change.
$(BIN)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[dev]'
	@touch $@

install: $(BIN)/.installed ## create the venv and install the project with its dev tools

system-deps: ## install the Debian packages the tests need (scripts/system-packages.txt)
	bash scripts/install-system-packages.sh

train: install ## train and save every model (again)
	$(BIN)/python train.py

serve: install ## train missing models, then serve on http://$(HOST):$(PORT)
	$(BIN)/python train.py --if-missing
	TABSERVE_GRPC_HOST=$(HOST) TABSERVE_METRICS_HOST=$(HOST) TABSERVE_METRICS_PORT=$(METRICS_PORT) \
	  $(BIN)/bentoml serve service:ModelAPI --host $(HOST) --port $(PORT)

test: install system-deps ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest

test-fast: install system-deps ## the suite without the slow tests
	$(BIN)/python -m pytest -m "not slow"

lint: install ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff: fix what can be fixed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

constraints: ## re-pin every dependency to what a fresh install resolves today
	rm -rf $(VENV)-pin && $(PYTHON) -m venv $(VENV)-pin
	$(VENV)-pin/bin/pip install --quiet --editable '.[dev]'
	$(VENV)-pin/bin/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt
	rm -rf $(VENV)-pin

clean: ## remove the venv and caches (not the model store)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# --- Open Inference Protocol over gRPC (docs/protocols.md) ---------------------------------------
.PHONY: grpc-stubs

GRPC_PROTO := tabserve/protocols/grpc/inference.proto

grpc-stubs: install ## regenerate the committed gRPC stubs from tabserve/protocols/grpc/inference.proto
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(GRPC_PROTO)

# --- Observability (docs/observability.md) -------------------------------------------------------
.PHONY: observe

PROMETHEUS_PORT ?= 9090

observe: install system-deps ## serve with a local Prometheus scraping it (http://127.0.0.1:$(PROMETHEUS_PORT))
	$(BIN)/python train.py --if-missing
	@TABSERVE_GRPC_HOST=$(HOST) TABSERVE_METRICS_HOST=$(HOST) TABSERVE_METRICS_PORT=$(METRICS_PORT) \
	  $(BIN)/bentoml serve service:ModelAPI --host $(HOST) --port $(PORT) & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server' EXIT; \
	echo "tabserve: http://$(HOST):$(PORT)   metrics: http://$(HOST):$(METRICS_PORT)/metrics"; \
	$(BIN)/python -m observability.local_prometheus --target $(HOST):$(METRICS_PORT) --port $(PROMETHEUS_PORT)

# --- Helm chart and plain manifests (helm/tabserve, k8s/) ----------------------------------------
.PHONY: k8s chart-docs checkov chart-test
CHECKOV_VENV := $(VENV)/checkov

k8s: install ## copy observability files into the chart; regenerate k8s/base from the chart
	$(BIN)/python k8s/generate.py

chart-docs: install ## helm/tabserve/README.md and the schema's descriptions, from values.yaml's comments
	$(BIN)/python helm/generate_docs.py

checkov: $(CHECKOV_VENV)/.installed ## the policy scanner, in its own venv (it pins many packages)

$(CHECKOV_VENV)/.installed: tests/chart/checkov-requirements.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --requirement tests/chart/checkov-requirements.txt
	@touch $@

chart-test: install checkov ## lint, render, validate and policy-scan the chart
	$(BIN)/python -m pytest tests/test_chart.py

# The suite includes the chart's policy scan, which needs the checkov venv.
test test-fast: checkov

# --- Clients: TabPy endpoints, the /ui/ page, query-string predictions, batch scoring ------------
.PHONY: batch test-clients
MODEL ?= churn

batch: install ## score a CSV offline: make batch MODEL=churn INPUT=in.csv OUTPUT=out.csv
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make batch MODEL=churn INPUT=in.csv OUTPUT=out.csv"; exit 2; }
	$(BIN)/python -m tabserve.batch --model $(MODEL) --input $(INPUT) --output $(OUTPUT)

test-clients: install system-deps ## the TabPy, web page (headless Chromium) and batch tests
	$(BIN)/python -m pytest tests/test_tabpy.py tests/test_web.py tests/test_batch.py

# --- OCI image and graceful shutdown (bentofile.yaml, scripts/build-image.sh, docs/image.md) ----
.PHONY: image test-image

image: install system-deps ## build the OCI image; prints its reference tabserve:<bento version>
	@bash scripts/build-image.sh

test-image: install system-deps ## build and run the image, and the graceful shutdown test
	$(BIN)/python -m pytest tests/test_image.py tests/test_graceful_shutdown.py

# --- Load tests and the side-by-side benchmark (loadtests/, docs/performance.md) -----------------
.PHONY: loadtest bench
MLSERVER_VENV := build/mlserver-venv
# make loadtest HOST_URL=http://svc:3000 GRPC_TARGET=svc:8001 loads a running server instead of
# starting one; LOADTEST_ARGS="--shape" finds the knee, "--run-time 30 --users 8" etc.
LOADTEST_ARGS ?=

loadtest: install ## locust, headless, bounded; reports/loadtest-<time>/; fails on broken thresholds
	$(if $(HOST_URL),,$(BIN)/python train.py --if-missing)
	$(BIN)/python -m loadtests.run $(if $(HOST_URL),--host $(HOST_URL)) $(if $(GRPC_TARGET),--grpc-target $(GRPC_TARGET)) $(LOADTEST_ARGS)

$(MLSERVER_VENV)/.installed: loadtests/baselines/mlserver-requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/pip install --quiet --requirement loadtests/baselines/mlserver-requirements.txt
	@touch $@

bench: install $(MLSERVER_VENV)/.installed ## ~13 min: tabserve vs Flask, gunicorn, MLServer; reports/bench-<time>/
	$(BIN)/python train.py --if-missing
	$(BIN)/python -m loadtests.bench.run

# --- Soak test: a real server under open-loop mixed traffic for minutes (loadtests/README.md) -----
.PHONY: soak
SOAK_DURATION ?= 600
SOAK_RATE     ?= 40
# e.g. SOAK_ARGS="--warmup 30 --max-rss-growth-mib 32"; every option: python -m loadtests.soak -h
SOAK_ARGS     ?=

soak: install ## SOAK_DURATION s (600) at SOAK_RATE req/s (40): memory, fds, metrics, p99 over time; reports/soak/
	$(BIN)/python train.py --if-missing
	$(BIN)/python -m loadtests.soak --duration $(SOAK_DURATION) --rate $(SOAK_RATE) $(SOAK_ARGS)

# --- A real single-node Kubernetes cluster on this machine (scripts/cluster/, docs/deploy.md) ----
.PHONY: cluster cluster-down cluster-status cluster-deploy e2e

cluster: install ## build (once, cached) and start a local single-node cluster; prints its kubeconfig
	bash scripts/cluster/build.sh
	bash scripts/cluster/up.sh

cluster-down: ## stop the local cluster and restore the host (network, mounts, sysctls)
	bash scripts/cluster/down.sh

cluster-status: ## the local cluster's processes and their memory
	bash scripts/cluster/status.sh

cluster-deploy: install system-deps ## build the image, import it and helm-install it into the local cluster
	bash scripts/cluster/deploy.sh

e2e: install system-deps ## on the local cluster: install, test, roll out, scale, roll back the chart
	TABSERVE_E2E=1 $(BIN)/python -m pytest tests/e2e -v -rP

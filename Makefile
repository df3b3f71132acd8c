# The project's commands. A fresh machine needs only Python 3.11 and make:
#   make serve   create the venv, install, train the models the store lacks, serve on 127.0.0.1:3000
#   make test    create the venv, install, run the whole test suite
# Each recipe calls the `tabserve` console script (tabserve/cli.py) or a test runner.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# python3.11 when the machine has one under that name, else python3 (its version is checked).
PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000
METRICS_PORT ?= 8002

# No usage analytics from anything this project starts.
export BENTOML_DO_NOT_TRACK := true

.PHONY: help install install-runtime system-deps train serve test test-fast lint format constraints clean

help: ## list the targets, and the main variables with their values
	@echo "Targets:"
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "Variables (make <target> NAME=value):"
	@printf '  %-16s %-58s %s\n' \
	  PYTHON 'the Python 3.11 that makes the venv' '$(PYTHON)' \
	  VENV 'the virtual environment' '$(VENV)' \
	  HOST 'address serve and observe listen on (HTTP, gRPC, metrics)' '$(HOST)' \
	  PORT 'HTTP port' '$(PORT)' \
	  METRICS_PORT 'Prometheus /metrics port' '$(METRICS_PORT)' \
	  PROMETHEUS_PORT 'the local Prometheus of make observe' '$(PROMETHEUS_PORT)' \
	  MODEL 'model of make batch' '$(MODEL)' \
	  INPUT 'CSV file make batch reads' '$(or $(INPUT),-)' \
	  OUTPUT 'CSV file make batch writes' '$(or $(OUTPUT),-)' \
	  HOST_URL 'make loadtest: a running server (else one is started)' '$(or $(HOST_URL),-)' \
	  GRPC_TARGET 'make loadtest: its gRPC host:port' '$(or $(GRPC_TARGET),-)' \
	  LOADTEST_ARGS 'tabserve loadtest options (-h); after --, locust options' '$(or $(LOADTEST_ARGS),-)' \
	  SOAK_DURATION 'seconds of make soak' '$(SOAK_DURATION)' \
	  SOAK_RATE 'requests per second of make soak' '$(SOAK_RATE)' \
	  SOAK_ARGS 'tabserve soak options (-h)' '$(or $(SOAK_ARGS),-)' \
	  BENCH_ARGS 'tabserve bench options (-h); --quick: a short smoke run' '$(or $(BENCH_ARGS),-)'

# The venv is rebuilt when the declared or pinned dependencies change: the runtime packages
# first (all serve, train and batch need), then the dev extra on top for the rest.
CHECK_PYTHON = version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || version="not found"; [[ $$version == 3.11 ]] || { echo "tabserve needs Python 3.11, and \
  PYTHON=$(PYTHON) is $$version. Name one: make $(or $(MAKECMDGOALS),install) PYTHON=/path/to/python3.11" >&2; exit 1; }

$(BIN)/.runtime: pyproject.toml constraints.txt
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt --editable .
	@touch $@

$(BIN)/.installed: $(BIN)/.runtime
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[dev]'
	@touch $@

install-runtime: $(BIN)/.runtime ## create the venv with the runtime dependencies only (serve, train, batch)

install: $(BIN)/.installed ## create the venv and install the project with its dev tools

system-deps: ## install the Debian packages the tests need, or say which are missing and what skips
	bash scripts/install-system-packages.sh

train: install-runtime ## train and save every model (again)
	$(BIN)/tabserve train

serve: install-runtime ## train missing models, then serve on http://HOST:PORT (127.0.0.1:3000)
	$(BIN)/tabserve train --if-missing
	$(BIN)/tabserve serve --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

test: install system-deps ## the default suite, ~11 min (CI then runs test-slow and e2e: .ci/run)
	$(BIN)/python -m pytest -m "not slow" --durations=15

test-slow: install system-deps ## the suites marked slow, ~6 min: image build, soak, fuzz, overload, faults
	$(BIN)/python -m pytest -m slow --durations=15

test-fast: install ## the default suite without installing Debian packages (tests needing them skip)
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

observe: install system-deps ## serve with a local Prometheus scraping it (http://127.0.0.1:PROMETHEUS_PORT)
	$(BIN)/tabserve train --if-missing
	@$(BIN)/tabserve serve --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT) & server=$$!; \
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

batch: install-runtime ## score a CSV offline: make batch MODEL=churn INPUT=in.csv OUTPUT=out.csv
	@test -n "$(INPUT)" -a -n "$(OUTPUT)" || { echo "usage: make batch MODEL=churn INPUT=in.csv OUTPUT=out.csv"; exit 2; }
	$(BIN)/tabserve batch --model $(MODEL) --input $(INPUT) --output $(OUTPUT)

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
# starting one; LOADTEST_ARGS="--shape" finds the knee, "--run-time 30 --users 8" etc., and what
# follows "--" goes to locust: LOADTEST_ARGS="-- HotPathUser --loglevel DEBUG".
# LOADTEST_API_TOKEN (environment) is sent as the bearer token, over HTTP and gRPC.
LOADTEST_ARGS ?=

loadtest: install ## locust, headless, bounded; reports/loadtest-<time>/; fails on broken thresholds
	$(if $(HOST_URL),,$(BIN)/tabserve train --if-missing)
	$(BIN)/tabserve loadtest $(if $(HOST_URL),--host $(HOST_URL)) $(if $(GRPC_TARGET),--grpc-target $(GRPC_TARGET)) $(LOADTEST_ARGS)

$(MLSERVER_VENV)/.installed: loadtests/baselines/mlserver-requirements.txt
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/pip install --quiet --requirement loadtests/baselines/mlserver-requirements.txt
	@touch $@

# BENCH_ARGS="--quick": every step, short (a smoke test, ~5 min); "--peers tabserve flask-dev",
# "--rates 10 50 100" ...; every option: .venv/bin/tabserve bench -h
BENCH_ARGS ?=

bench: install $(MLSERVER_VENV)/.installed ## ~20 min: tabserve vs Flask, gunicorn, MLServer, closed and open loop; reports/bench-<time>/
	$(BIN)/tabserve train --if-missing
	$(BIN)/tabserve bench $(BENCH_ARGS)

# --- Soak test: a real server under open-loop mixed traffic for minutes (loadtests/README.md) -----
.PHONY: soak
SOAK_DURATION ?= 600
SOAK_RATE     ?= 40
# e.g. SOAK_ARGS="--warmup 30 --max-rss-growth-mib 32"; every option: .venv/bin/tabserve soak -h
SOAK_ARGS     ?=

soak: install ## SOAK_DURATION s (600) at SOAK_RATE req/s (40): memory, fds, metrics, p99 over time; reports/soak/
	$(BIN)/tabserve train --if-missing
	$(BIN)/tabserve soak --duration $(SOAK_DURATION) --rate $(SOAK_RATE) $(SOAK_ARGS)

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

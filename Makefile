# Self-documenting: `make` or `make help` lists every target with its `##` comment.
.DEFAULT_GOAL := help
SHELL := /bin/bash
UV_VERSION := 0.13.9
# uv from PATH, or the one pip installs into this Python (pyenv shims may not see it yet)
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN = $(UV) run --frozen
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# make lint runs the tests marked lint; the fast lane needs no server, no Docker engine and no
# trained model; the slow lane is the rest
FAST_LANE := not lint and not slow and not postgres and not redis
SLOW_LANE := not lint and not ($(FAST_LANE))
TIMINGS := .ci/timings
TIMED = $(RUN) python -m tests.timings --dir $(TIMINGS)

.PHONY: help all setup system-packages venv repro registry serve stop status snapshot metrics plots loop-demo test test-fast test-slow compose-test bench serve-triton drift-demo load load-smoke manifests validate-deploy lint clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

all: setup repro registry serve ## Everything from a fresh clone: install, train, register, serve every model, one prediction each

setup: system-packages venv ## Install system packages and the locked Python environment

system-packages: ## Debian packages: the CNN's data, the speech model's recordings and voice (pocketsphinx-testdata, espeak-ng), prometheus and alertmanager (promtool, amtool), nginx (the proxy), Docker 20.10 + docker-compose + debootstrap (the deploy tier); needs root
	@if [ ! -d $(FASHION_MNIST) ]; then \
		echo "installing dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@if [ ! -d /usr/share/pocketsphinx/test/data ] || ! command -v espeak-ng >/dev/null; then \
		echo "installing pocketsphinx-testdata and espeak-ng"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocketsphinx-testdata espeak-ng; \
	fi
	@if ! command -v promtool >/dev/null; then \
		echo "installing prometheus"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; \
	fi
	@if ! command -v amtool >/dev/null; then \
		echo "installing prometheus-alertmanager"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager; \
	fi
	@if ! PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || ! command -v docker-compose >/dev/null; then \
		echo "installing nginx-light and docker-compose"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light docker-compose; \
	fi
	@# Debian's engine and its 20.10 client (BuildKit built in), debootstrap for the image base
	@if ! PATH="$$PATH:/usr/sbin" command -v dockerd >/dev/null || ! PATH="$$PATH:/usr/sbin" command -v debootstrap >/dev/null; then \
		echo "installing docker.io and debootstrap"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap; \
	fi
	@command -v kustomize >/dev/null || command -v kubectl >/dev/null || \
		echo "warning: neither kubectl nor kustomize is installed: the k8s/ checks need one (k8s/README.md)"

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (this machine and CI set it) no
# Python process would ever write a .pyc, so each one compiled every module it imports from
# source: 6-10 s for a pipeline stage's imports, 2-4 s with the bytecode (a minute, once)
venv: ## The locked environment (.venv) from uv.lock
	@command -v uv >/dev/null || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q "uv==$(UV_VERSION)"
	$(UV) sync --frozen --compile-bytecode
	$(UV) sync --frozen --compile-bytecode --project services/triton

repro: ## Run the DVC pipeline (prepare, train, evaluate, export, register) for every model
	$(RUN) dvc repro

registry: ## Show every model's versions, aliases and champion metrics against its floors
	$(RUN) python -m pipelines.show

serve: ## Start the local stack (a service per model + PyTriton) in the background; one prediction each
	$(RUN) python -m services.tools.stack up
	$(RUN) python -m services.tools.stack demo

stop: ## Stop the local stack (SIGTERM: in-flight requests finish)
	$(RUN) python -m services.tools.stack down

status: ## Which local services are up and ready
	$(RUN) python -m services.tools.stack status

snapshot: ## A new snapshot of MODEL's labelled production records (then `dvc repro` retrains on it)
	@test -n "$(MODEL)" || { echo "usage: make snapshot MODEL=<key>"; exit 2; }
	$(RUN) dvc repro --force --single-item snapshot@$(MODEL)

metrics: ## dvc metrics show for every model
	$(RUN) dvc metrics show

plots: ## Render every model's plots to dvc_plots/index.html
	$(RUN) dvc plots show -o dvc_plots

test: setup ## Everything CI runs: lint, the fast lane, then the slow lane (servers, trained models, Docker); ends with what each part cost
	@$(TIMED) reset
	@$(TIMED) step lint -- $(MAKE) --no-print-directory lint
	@$(TIMED) step fast -- $(MAKE) --no-print-directory test-fast
	@$(TIMED) step slow -- $(MAKE) --no-print-directory test-slow
	@$(TIMED) report

test-fast: ## The fast lane: code and data tiers, two processes; no server, no Docker, no trained model
	$(RUN) pytest -m "$(FAST_LANE)" -n 2

test-slow: ## The slow lane: the reduced workspace's models, the servers (PostgreSQL, Redis), the stacks, Docker
	$(RUN) pytest -m "$(SLOW_LANE)"

compose-test: ## The deploy tier alone: build the images, docker-compose up the stack on a real engine, check it, down, up again
	$(RUN) pytest -m deploy tests/deploy

serve-triton: ## Triton's HTTP/gRPC protocol for fashion_cnn, semantic_search's encoder, tree_detection and fashion_segmentation (and their BLS models) on :8000/:8001 (metrics :8002), PyTriton, foreground
	services/triton/.venv/bin/python services/triton/serve.py --repository artifacts/fashion_cnn/triton \
		--repository artifacts/semantic_search/triton --repository artifacts/tree_detection/triton \
		--repository artifacts/fashion_segmentation/triton \
		--http-port 8000 --grpc-port 8001 --metrics-port 8002

loop-demo: ## The closed loop on titanic: a shift, outcomes via /feedback, ModelPerformanceDegraded, retraining on labelled production data, canary promoted; a broken candidate rolled back (about 4 minutes, in a copy)
	$(RUN) python -m services.tools.loop_demo

drift-demo: ## Shifted traffic for titanic until the drift alert fires, the webhook retrains it through the gate (Prometheus + Alertmanager + drift service, real)
	$(RUN) python -m services.tools.drift_demo

bench: ## Serving benchmark (wrk): floor vs anchor (hand-written FastAPI + ONNX Runtime) vs services vs BentoML vs mlflow models serve, the graphs alone (ORT's profiler), FP32 vs INT8 (the vision models), Triton's dynamic batching, then the Feast feature layer and the prediction log -> reports/bench/
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(RUN) python -m services.tools.bench
	$(RUN) python -m services.tools.bench.graphs
	$(RUN) python -m services.tools.bench.precision
	$(RUN) python -m services.tools.bench.triton
	$(RUN) python -m services.tools.bench.features
	$(RUN) python -m services.tools.bench.predlog
	$(RUN) python -m services.tools.bench.drift

load: ## The stack's rated capacity (started if it is not up, retraining off): Locust step ramp to each model's p99 objective, the rated rate held, an overload run; reports/load/capacity.*
	DRIFT_RETRAIN=off $(RUN) python -m services.tools.stack up
	$(RUN) python -m services.tools.load.capacity

load-smoke: ## A short Locust run of every scenario against the local stack, SLO thresholds checked (CI's form of make load)
	$(RUN) python -m services.tools.stack up
	$(RUN) python -m services.tools.load --run-time 25s

manifests: ## Regenerate docker-compose.yml, the proxy config and k8s/ from params.yaml and infra/ (services/tools/deploy.py)
	$(RUN) python -m services.tools.deploy

validate-deploy: ## Check compose (Compose spec, docker-compose config), the Dockerfile (hadolint) and every k8s overlay (kustomize + kubernetes-validate)
	$(RUN) pytest tests/unit/test_compose.py tests/unit/test_k8s.py tests/unit/test_k8s_checks.py

lint: ## ruff (lint and format), strict mypy, then the tests marked lint: hadolint, promtool (config, rules, their unit tests), the generated deployment files up to date
	$(RUN) ruff check contract pipelines services tests
	$(RUN) ruff format --check contract pipelines services tests
	$(RUN) mypy
	$(RUN) pytest -m lint -q -p no:cacheprovider

clean: ## Remove pipeline outputs and the local registry (keeps .venv and the DVC cache)
	rm -rf data/raw data/split data/feast models artifacts reports/registry mlruns dvc_plots .serving-cache run

PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
PROTOS := $(wildcard protos/philip/v1/*.proto)

.PHONY: install proto proto-check lint test test-fast demo serve bench eval train-tiny clean k8s-validate fuzz

.venv/bin/python:
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip

.venv/.installed: .venv/bin/python pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

install: .venv/.installed
	.venv/bin/philip --help > /dev/null && echo "installed: .venv/bin/philip"

# Generated code lives in philip/v1 and is committed; proto-check proves it is current.
proto: .venv/.installed
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --mypy_out=quiet:. --mypy_grpc_out=quiet:. $(PROTOS)
	touch philip/v1/__init__.py

proto-check: .venv/.installed
	rm -rf .proto-check && mkdir -p .proto-check
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=.proto-check --grpc_python_out=.proto-check --mypy_out=quiet:.proto-check --mypy_grpc_out=quiet:.proto-check $(PROTOS)
	touch .proto-check/philip/v1/__init__.py
	diff -r philip/v1 .proto-check/philip/v1 -x __pycache__ && rm -rf .proto-check && echo "generated code is current"

lint: .venv/.installed
	.venv/bin/ruff check .
	.venv/bin/mypy philip services
	.venv/bin/lint-imports

test: install proto-check lint
	.venv/bin/pytest -q

demo: install
	bash scripts/demo.sh

# Every service in one process with the studio on http://127.0.0.1:8080/ (gRPC on 127.0.0.1:50051).
serve: install
	.venv/bin/philip serve all --http-port 8080

eval: install
	.venv/bin/philip eval model --json
	.venv/bin/philip eval upscaler --json
	.venv/bin/philip eval feedback --json
	.venv/bin/philip eval personalize --json

bench: install
	.venv/bin/philip bench model --json
	.venv/bin/philip bench generate --json
	.venv/bin/philip bench refine --json
	.venv/bin/philip bench http --json

# 1,000 random and mutated requests against a running gateway, over gRPC and over HTTP (make test runs
# 120 of each).
fuzz: install
	PHILIP_FUZZ_EXAMPLES=1000 .venv/bin/pytest -q tests/hardening/test_fuzz_gateway.py tests/http/test_http_fuzz.py

# The shipped weights' two stages (models/README.md): from scratch, then continued at half the rate.
train-tiny: install
	.venv/bin/philip train-tiny --steps 3600
	.venv/bin/philip train-tiny --init-from models/philip-tiny --steps 1500 --lr 3e-4 --work-dir models/.philip-tiny-ft
	.venv/bin/philip train-upscaler

# Renders both kustomize overlays and validates them offline against Kubernetes $(K8S_VERSION) (strict:
# unknown fields fail; KEDA's custom resources have no schema there and only warn), then the wiring
# checks of tests/deploy. Needs no cluster: kubectl and kubernetes-validate come with the dev extra.
K8S_VERSION ?= 1.34
k8s-validate: .venv/.installed
	@set -e; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; for overlay in dev amd; do \
	  echo "deploy/k8s/overlays/$$overlay -> Kubernetes $(K8S_VERSION)"; \
	  .venv/bin/kubectl kustomize deploy/k8s/overlays/$$overlay > "$$out/$$overlay.yaml"; \
	  .venv/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) "$$out/$$overlay.yaml"; \
	done
	.venv/bin/pytest -q tests/deploy

clean:
	rm -rf .proto-check .pytest_cache .mypy_cache .ruff_cache

# Developer entry points. Each target creates the virtual environment on first use.
#   make demo   a local S3 and the gateway in one process, a 64 MiB upload through it, verified
#   make run    the gateway on 127.0.0.1:50051 with an embedded local S3
#   make test   every check CI runs: generated-code drift, lint, types, chart, proto, the tests

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo run test protos bench chart clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/s3-upload-gateway demo

run: $(STAMP)
	$(BIN)/s3-upload-gateway serve --embedded-s3

test: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway
	$(BIN)/python scripts/check_chart.py
	$(BIN)/python scripts/check_proto.py
	$(BIN)/python -m pytest

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

bench: $(STAMP)
	$(BIN)/python -m bench.relay

# helm lint/template of the chart, manifests against Kubernetes' schemas, alerts and dashboard.
chart: $(STAMP)
	$(BIN)/python scripts/check_chart.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# mlperf-operator: the v1.0 workflow's vocabulary, on a laptop or a cluster.
#
#   make run                      set up and run the main job: the local pipeline on this CPU
#   make test                     set up and run every test (the control plane included)
#   make run RUN_ARGS="--benchmarks=resnet50 --scenarios=Offline --test_mode=PerformanceOnly --fast"
#   make dev-cluster / dev-cluster-down / crds / lint

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
BENCHMARKS ?=
RUN_ARGS ?=
PYTEST_ARGS ?=
WORKDIR ?= mlperf-work

# BENCHMARKS=x,y is the v1.0 workflow's way of naming benchmarks; it joins RUN_ARGS.
V10_ARGS = $(if $(BENCHMARKS),--benchmarks=$(BENCHMARKS)) $(RUN_ARGS)

.PHONY: help venv run test crds lint \
	download_data download_model preprocess_data generate_engines run_harness run_audit_harness \
	update_results update_compliance submission

help:
	@sed -n '1,8p' Makefile

# The virtual environment is made once and again whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) $(V10_ARGS)

test: venv tools image-tools
	$(PY) -m pytest $(PYTEST_ARGS)

crds: venv
	$(PY) -m mlperf_operator.crd

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) -m mlperf_operator.crd --check

# The v1.0 workflow's verbs, each the matching `mlperf` verb over the same flags.
download_data: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only download-data $(V10_ARGS)
download_model: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only download-model $(V10_ARGS)
preprocess_data: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only preprocess $(V10_ARGS)
generate_engines: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only build-engine $(V10_ARGS)
run_harness: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only run-harness $(V10_ARGS)
run_audit_harness: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only audit $(V10_ARGS)
update_results update_compliance: venv
	$(BIN)/mlperf run --workdir $(WORKDIR) --only report $(V10_ARGS)

-include mk/cluster.mk
-include mk/helm.mk

# The two commands a newcomer needs: `make demo` (set up everything, run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: setup system venv binaries demo up test quick lint typecheck layers unit integration e2e manifests bench referee eval clean

setup: system venv binaries

system:
	@bash scripts/setup-system.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

binaries: venv
	@$(PY) -m devstack build

## The main job: the whole stack, the operator, a narrated demo of faults → tickets → auto-resolve. Builds only what
## the demo starts (the control plane and Prometheus); helm and the node are built by the tiers that use them.
demo: system venv
	@$(PY) -m devstack demo

## Bring the stack up with an example MonitoredCluster and keep it running until Ctrl-C.
up: system venv
	@$(PY) -m devstack up --hold

lint: venv
	@$(PY) -m ruff check operator_k8s devstack tests scripts
	@$(PY) -m ruff format --check operator_k8s devstack tests scripts

typecheck: venv
	@$(PY) -m mypy

layers: venv
	@$(VENV)/bin/lint-imports

unit: venv
	@$(PY) -m pytest tests/unit -q

integration: setup
	@$(PY) -m pytest tests/integration -q

e2e: setup
	@$(PY) -m pytest tests/e2e -q

## Everything CI runs: static checks, then every test tier (unit, integration, e2e, node) on the real stack.
test: setup lint typecheck layers
	@$(PY) -m pytest tests -q --durations=15

## The same suite to depth "medium" (tests/conftest.py: unit, integration and the e2e tests that matter most; no
## node tier): the quick run before a push.
quick: system venv lint typecheck layers
	@$(PY) -m pytest tests -q --durations=10 --depth medium

## Render deploy/operator-k8s.yaml from the chart (a test fails when they drift).
manifests: venv
	@$(PY) -m devstack manifests

## The benchmark (about 30 minutes on 2 cores); pass options with BENCH_ARGS="--sizes 100,1000 --trials 3".
bench: setup
	@$(PY) -m devstack bench $(BENCH_ARGS)

## The referee: every fault and control, the operator's verdicts vs TiKV's and PD's own alerting rules, in both label
## worlds; writes .referee/table.md and fails on any disagreement (a few minutes).
referee: setup
	@$(PY) -m devstack referee $(REFEREE_ARGS)

## The evaluation: every fault of the catalogue (devstack/jobs/faults.py), its held-out variants and the no-fault
## controls on the real stack; writes .eval/results.json and .eval/table.md (about 15 minutes on 2 cores).
eval: setup
	@$(PY) -m devstack eval $(EVAL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

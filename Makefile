# Everything the README promises, from a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO_ROOT ?= /tmp/reconciler-demo

DEMO_REPO ?= /tmp/reconciler-demo-repo

.PHONY: install demo run test lint typecheck unit bench bench-daemon clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e examples/ini-provider
	$(PY) -m compileall -q reconciler
	touch $@

install: $(VENV)/.installed

# Apply the bundled demo config repository into a sandbox, then show that a
# second plan finds nothing to do.
demo: install
	$(BIN)/reconciler apply configs/demo --root $(DEMO_ROOT) --state-dir $(DEMO_ROOT)/.state --allow-commands
	$(BIN)/reconciler plan configs/demo --root $(DEMO_ROOT) --state-dir $(DEMO_ROOT)/.state --allow-commands

# The daemon on a local git repository made from configs/demo (kept between runs,
# so your commits survive): managed files under $(DEMO_ROOT), state in
# $(DEMO_ROOT)/.state, API and webhooks on 127.0.0.1:9108. Ctrl-C stops it.
run: install
	@if [ ! -d $(DEMO_REPO)/.git ]; then \
	  mkdir -p $(DEMO_REPO) && cp -R configs/demo/. $(DEMO_REPO)/ && \
	  git -C $(DEMO_REPO) init -q -b main && git -C $(DEMO_REPO) add -A && \
	  git -C $(DEMO_REPO) -c user.name=demo -c user.email=demo@example.invalid \
	    commit -q -m "demo configuration" && echo "created the demo repository $(DEMO_REPO)"; fi
	$(BIN)/reconciler run --repo $(DEMO_REPO) --interval 5s --root $(DEMO_ROOT) --allow-commands \
	  --state-dir $(DEMO_ROOT)/.state

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy --strict reconciler

unit: install
	$(BIN)/pytest

test: lint typecheck unit

bench: install
	$(PY) -m compileall -q reconciler
	$(PY) bench/run.py --sizes 1000 10000
	$(PY) bench/metrics.py --n 10000

bench-daemon: install
	$(PY) -m compileall -q reconciler
	$(PY) bench/daemon.py --n 10000 --repeat 20 --idle 30

clean:
	rm -rf $(VENV) .reconciler .mypy_cache .ruff_cache .pytest_cache *.egg-info

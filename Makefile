# Everything the README promises, from a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO_ROOT ?= /tmp/reconciler-demo
DEMO_REPO ?= /tmp/reconciler-demo-repo
DEMO_CONFIG ?= configs/demo
DEMO_LISTEN ?= 127.0.0.1:9108
# prints a new random secret (the demo's webhook, API and notification secrets)
NEW_SECRET := $(PY) -c 'import secrets; print(secrets.token_hex(16))'
# `make run HOOKS=1`: the webhooks and POST /api/v1/sync on (secrets made in
# $(DEMO_HOOKS) on first use), polling only hourly, so a commit arrives when a hook
# or a sync asks for it.
HOOKS ?=
DEMO_HOOKS := $(DEMO_ROOT)/.hooks
ifeq ($(HOOKS),1)
RUN_TRIGGERS := --interval 1h --webhook-secret-file $(DEMO_HOOKS)/webhook-secret \
  --api-token-file $(DEMO_HOOKS)/api-token
else ifeq ($(HOOKS),)
RUN_TRIGGERS := --interval 5s
else
$(error HOOKS=1 turns the webhooks and the sync API on; found HOOKS=$(HOOKS))
endif
# `make run NOTIFY=1`: notifications on, by one setting (--notifications): a signed
# webhook to `make receiver` (scripts/notify_receiver.py on $(DEMO_RECEIVER), run it
# in another terminal), its secret made in $(DEMO_NOTIFY) on first use.
NOTIFY ?=
DEMO_NOTIFY := $(DEMO_ROOT)/.notify
DEMO_RECEIVER ?= 127.0.0.1:9109
ifeq ($(NOTIFY),1)
RUN_NOTIFY := --notifications $(DEMO_NOTIFY)/notifications.yaml
else ifeq ($(NOTIFY),)
RUN_NOTIFY :=
else
$(error NOTIFY=1 sends notifications to `make receiver`; found NOTIFY=$(NOTIFY))
endif

.PHONY: install demo run receiver test lint typecheck unit bench bench-daemon screenshot clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e examples/ini-provider
	$(PY) -m compileall -q reconciler
	touch $@

install: $(VENV)/.installed

# Apply the demo config tree into its sandbox, saying in words what differed there
# before (drift left by the README walkthrough, commits `make run` applied) and what
# is left after (drift under policy warn, and how to heal it): scripts/demo.py.
demo: install
	@$(PY) scripts/demo.py $(DEMO_CONFIG) --root $(DEMO_ROOT) --state-dir $(DEMO_ROOT)/.state \
	  --repo $(DEMO_REPO)

# The daemon on a local git repository made from configs/demo (kept between runs,
# so your commits survive): managed files under $(DEMO_ROOT), state in
# $(DEMO_ROOT)/.state, the API on $(DEMO_LISTEN), polling every 5 s (HOOKS=1:
# webhooks and the sync API on, polling hourly). Ctrl-C stops it.
run: install
	@if [ ! -d $(DEMO_REPO)/.git ]; then \
	  mkdir -p $(DEMO_REPO) && cp -R $(DEMO_CONFIG)/. $(DEMO_REPO)/ && \
	  git -C $(DEMO_REPO) init -q -b main && git -C $(DEMO_REPO) add -A && \
	  git -C $(DEMO_REPO) -c user.name=demo -c user.email=demo@example.invalid \
	    commit -q -m "demo configuration" && echo "created the demo repository $(DEMO_REPO)"; fi
ifeq ($(HOOKS),1)
	@umask 077 && mkdir -p $(DEMO_HOOKS) && for f in webhook-secret api-token; do \
	  [ -s $(DEMO_HOOKS)/$$f ] || $(NEW_SECRET) \
	    > $(DEMO_HOOKS)/$$f; done
	@echo "webhooks and sync on: secret $(DEMO_HOOKS)/webhook-secret, token $(DEMO_HOOKS)/api-token"
endif
ifeq ($(NOTIFY),1)
	@$(MAKE) --no-print-directory $(DEMO_NOTIFY)/notifications.yaml
	@echo "notifications on: to http://$(DEMO_RECEIVER)/ (run \`make receiver\` to see them)"
endif
	$(BIN)/reconciler run --repo $(DEMO_REPO) $(RUN_TRIGGERS) --root $(DEMO_ROOT) --allow-commands \
	  --state-dir $(DEMO_ROOT)/.state --listen $(DEMO_LISTEN) $(RUN_NOTIFY)

# The demo's receivers file: one signed webhook to `make receiver`.
$(DEMO_NOTIFY)/notifications.yaml:
	@umask 077 && mkdir -p $(DEMO_NOTIFY) && [ -s $(DEMO_NOTIFY)/secret ] || \
	  $(NEW_SECRET) > $(DEMO_NOTIFY)/secret
	@printf 'receivers:\n  - name: demo\n    type: webhook\n    url: http://%s/\n    secret_file: secret\n' \
	  '$(DEMO_RECEIVER)' > $@

# A notification receiver for `make run NOTIFY=1`: prints each notification it gets,
# once its signature checks out (scripts/notify_receiver.py). Ctrl-C stops it.
receiver: install $(DEMO_NOTIFY)/notifications.yaml
	$(PY) scripts/notify_receiver.py --listen $(DEMO_RECEIVER) --secret-file $(DEMO_NOTIFY)/secret

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

# The status page of the demo daemon (run in the background on a free port with
# its own temporary root, one resource drifted by hand) photographed in Debian's
# Chromium for the README: docs/images/status-page.png.
screenshot: install
	$(PY) scripts/screenshot.py --out docs/images/status-page.png

clean:
	rm -rf $(VENV) .reconciler .mypy_cache .ruff_cache .pytest_cache *.egg-info

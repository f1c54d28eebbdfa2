# Everyday commands. `make demo` and `make test` install what is missing first (OS packages with apt-get,
# the project and its test tools with pip into .venv), so on a fresh Debian/Ubuntu machine they are the
# only two commands needed. A virtualenv, because Debian's own Python refuses system-wide pip installs.
BOOTSTRAP_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
ARGS ?=
# pip runs again only when pyproject.toml changes; `make install` forces it.
STAMP := $(VENV)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help install system-packages fmt lint typecheck test demo compose-check bench

help:
	@echo "make demo           run the whole pipeline locally (ARGS=--once to stop after the sample)"
	@echo "make test           run every test (unit, integration against real servers, chaos)"
	@echo "make fmt | lint | typecheck | compose-check | install"

install: system-packages $(PYTHON)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test]'
	@touch $(STAMP)

$(PYTHON):
	@$(BOOTSTRAP_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "mailroom needs Python 3.11 or newer as $(BOOTSTRAP_PYTHON) (make BOOTSTRAP_PYTHON=python3.12 ...)"; exit 1; }
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The real servers the demo and the integration tests start privately on free loopback ports, iproute2
# for the pod-fidelity test (it gives each pod a network namespace with its loopback up), and
# promtool (Debian's prometheus package) for the alert rules' tests; without recommends, so no node
# exporter. The packages may auto-start a system dovecot (143/993) or prometheus (9090): ours never use
# those, but a service we did not ask for is stopped (never failing over it).
system-packages:
	@have() { command -v "$$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$$1" ] || [ -x "/usr/bin/$$1" ]; }; \
	missing=""; \
	have dovecot || missing="$$missing dovecot-imapd"; \
	have redis-server || missing="$$missing redis-server"; \
	$(BOOTSTRAP_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	have ip || missing="$$missing iproute2"; \
	lean=""; have promtool || lean="prometheus"; \
	if [ -n "$$missing$$lean" ]; then \
	  echo "installing$$missing $$lean"; \
	  $(SUDO) apt-get update || exit 1; \
	  if [ -n "$$missing" ]; then \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || exit 1; \
	  fi; \
	  if [ -n "$$lean" ]; then \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$lean || exit 1; \
	  fi; \
	  for service in dovecot prometheus; do \
	    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet $$service 2>/dev/null; then \
	      $(SUDO) systemctl disable --now $$service || true; \
	    elif command -v service >/dev/null 2>&1; then \
	      $(SUDO) service $$service stop >/dev/null 2>&1 || true; \
	    fi; \
	  done; \
	fi

fmt: $(STAMP)
	$(PYTHON) -m ruff format .

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

typecheck: $(STAMP)
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy -p devstack

test: system-packages $(STAMP)
	$(PYTHON) -m pytest -q

demo: system-packages $(STAMP)
	$(PYTHON) -m devstack.demo $(ARGS)

# mailroom against a raw imapclient lower bound on private servers (ARGS=--quick for a one-minute run).
bench: system-packages $(STAMP)
	$(PYTHON) -m bench.run $(ARGS)

# Validate docker-compose.yml with whichever compose client exists; without one, the unit test checks
# its structure and the config it mounts.
compose-check:
	@if docker compose version >/dev/null 2>&1; then \
	  docker compose -f docker-compose.yml config -q && echo "docker compose: docker-compose.yml is valid"; \
	elif command -v docker-compose >/dev/null 2>&1; then \
	  docker-compose -f docker-compose.yml config -q && echo "docker-compose: docker-compose.yml is valid"; \
	else \
	  $(PYTHON) -m pytest -q tests/unit/test_compose.py; \
	fi

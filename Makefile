# hpcwaas: the two commands are `make demo` and `make test`. Both install what they need
# (Debian packages as root, the virtualenv in .venv) and are idempotent.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install system venv lint pytest stack-up stack-up-demo stack-down stack-status clean-venv

demo: install  ## start the stack (persistent OpenBao) and the gateway, then run the main job
	$(PYTHON) -m hpcwaas.stack up --demo
	$(PYTHON) -m hpcwaas.demo

test: install  ## lint, type-check and run the whole suite against the real stack
	$(PYTHON) -m hpcwaas.stack up
	$(PYTHON) -m hpcwaas.stack up --demo --only openbao-raft
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest -q --durations=15

install: system venv  ## system packages and the virtualenv

system:  ## Debian packages and site users (quick no-op when present)
	bash scripts/install-system.sh

venv: $(STAMP)

# Reinstalled only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

lint:  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy hpcwaas gateway deployer tosca catalogue containers data_logistics

pytest:  ## the test suite only (the stack must be up)
	$(PYTHON) -m pytest -q

stack-up: install  ## start the stack for tests (idempotent)
	$(PYTHON) -m hpcwaas.stack up

stack-up-demo: install  ## start the stack with the persistent OpenBao
	$(PYTHON) -m hpcwaas.stack up --demo

stack-down:  ## stop every process of the stack and the demo gateway (state is kept)
	-$(PYTHON) -c 'from hpcwaas.demo import stop_gateway; from hpcwaas.settings import get_settings; stop_gateway(get_settings().stack_dir)'
	$(PYTHON) -m hpcwaas.stack down

stack-status:  ## show every process of the stack
	$(PYTHON) -m hpcwaas.stack status

clean-venv:
	rm -rf $(VENV)

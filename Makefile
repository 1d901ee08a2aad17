# hpcwaas developer commands. The local stack (OpenBao, sshd, Slurm with slurmdbd, PostgreSQL on
# loopback) needs the system packages first: `sudo bash scripts/install-system.sh`.
PYTHON ?= .venv/bin/python

.PHONY: stack-up stack-down stack-status

stack-up:  ## install the system packages if missing, then start the stack (idempotent)
	bash scripts/install-system.sh
	$(PYTHON) -m hpcwaas.stack up

stack-down:  ## stop every process of the stack (state is kept)
	$(PYTHON) -m hpcwaas.stack down

stack-status:  ## show every process of the stack
	$(PYTHON) -m hpcwaas.stack status

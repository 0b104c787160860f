# Two commands do all set-up on a fresh machine:
#   make serve   -> creates .venv if needed, installs mpq, runs the API + embedded worker on SQLite (loopback)
#   make test    -> creates .venv if needed, installs mpq[dev], runs the whole test suite
PYTHON ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: serve test bench install

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/mpq serve

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/accuracy.py

# Two commands do all set-up on a fresh machine:
#   make serve   -> creates .venv if needed, installs mpq, runs the API + embedded worker on SQLite (loopback)
#   make test    -> creates .venv if needed, installs mpq[dev] and the system components the tests drive
#                   (chromium), runs the whole test suite; .ci/run runs exactly this with CI=true
PYTHON ?= python3
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
STAMP := $(VENV)/.installed
# two workers, a test module per worker (module fixtures such as the E2E server stay together)
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: serve test bench install

$(STAMP): pyproject.toml
	@echo "== mpq: creating $(VENV) and installing mpq[dev] (first run only: about 2-6 minutes) =="
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "== mpq: installed =="

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/mpq serve

test: $(STAMP)
	bash scripts/ensure-components.sh
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/accuracy.py

# Two commands on a fresh machine with only Python (3.11+) and make:
#   make run    the whole system on the embedded default (Temporal dev server + SQLite)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test install clean-var bench

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "haven needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(INSTALLED)

run: $(INSTALLED)
	HAVEN_DEV_MODE=true $(BIN)/haven run

test: $(INSTALLED)
	$(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/python -m bench.intake_latency

clean-var:
	rm -rf var

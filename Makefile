# Two commands on a fresh machine with only Python (3.11+) and make:
#   make run    the whole system on the embedded default (Temporal dev server + SQLite + local Stripe)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# make run starts the local Stripe server too; `make run HAVEN_LOCAL_STRIPE=false` leaves it out.
HAVEN_LOCAL_STRIPE ?= true

.PHONY: run test install clean-var bench histories faults bytecode

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "haven needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

install: $(INSTALLED)

# The workflow sandbox imports a workflow's modules afresh for every workflow instance; compiled
# once here, they are not recompiled from source each time (when PYTHONDONTWRITEBYTECODE is set,
# Python never writes them itself). Quick when nothing changed.
bytecode: $(INSTALLED)
	@$(BIN)/python -m compileall -q workflows activities haven policies api

run: bytecode
	HAVEN_DEV_MODE=true HAVEN_LOCAL_STRIPE=$(HAVEN_LOCAL_STRIPE) $(BIN)/haven run

# One pytest process per core; each has its own template databases and Temporal test servers.
test: bytecode
	$(BIN)/pytest -n auto --dist worksteal

# The full fault matrix (needs PostgreSQL): every fault, every activity boundary, 3 runs each.
faults: bytecode
	$(BIN)/python -m tests.fault_matrix

# Records the history of every lifecycle path not yet in tests/histories/ (see tests/workflow_histories.py).
histories: $(INSTALLED)
	HAVEN_RECORD_HISTORIES=1 $(BIN)/pytest -q -k "not postgresql" $(HISTORY_TESTS)

HISTORY_TESTS := tests/test_lifecycle.py tests/test_payment_outcomes.py tests/test_stripe_webhooks.py tests/test_reconciliation.py tests/test_ledger.py \
	tests/test_canaries.py tests/test_integrity.py

bench: bytecode
	$(BIN)/python -m bench.lifecycle_throughput --requests 1000
	$(BIN)/python -m bench.open_requests --requests 10000 --follow-ups 1000
	$(BIN)/python -m bench.api_latency --rate 100
	$(BIN)/python -m bench.intake_latency
	$(BIN)/python -m bench.payment_latency
	$(BIN)/python -m bench.export_ledger --db sqlite
	$(BIN)/python -m bench.export_ledger --db postgresql

clean-var:
	rm -rf var

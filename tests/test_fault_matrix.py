"""The short fault matrix (the full one: `python -m tests.fault_matrix`, see its docstring): every
fault of the matrix strikes while grant requests go from submission to closed on the production
shape (separate API and worker processes, the Temporal dev server on a file, PostgreSQL, the
local Stripe server); worker kills at three of the fourteen activity boundaries. Nothing may be
lost, paid twice or left in another state, the ledger must match Stripe, and the audit chain
must verify."""

from __future__ import annotations

import dataclasses

from tests.fault_matrix import FAULTS, run_matrix, table

SHORT_BOUNDARIES = ["after:record_event", "after:reserve_budget", "after:start_disbursement"]


async def test_no_fault_loses_a_request_pays_twice_or_breaks_the_books(postgres_server_url, tmp_path):
    faults = [
        dataclasses.replace(f, variants=SHORT_BOUNDARIES) if f.name == "worker_killed_at_boundary" else f
        for f in FAULTS
        if f.name != "none"
    ]
    rows = await run_matrix(faults, runs=1, requests=2, var_dir=tmp_path, postgres_url=postgres_server_url)
    print("\n" + table(rows))
    assert [r.fault for r in rows] == [f.name for f in faults]
    for row in rows:
        assert row.requests == row.runs * 2 and row.requests > 0
        assert (row.lost, row.duplicated_payments, row.wrong_end_states, row.ledger_mismatches) == (0, 0, 0, 0), row
        assert row.audit_chain_verifies and not row.problems, row

"""Exports of the ledger and the audit log for finance and auditors: CSV or JSON Lines, streamed
with constant memory, each with a manifest that matches its bytes.

    spec       what an export is of: kind, format, the period [from, to)
    sources    the rows, read in one snapshot a batch at a time, and their control totals
    encoders   CSV and JSON Lines
    manifest   what an auditor checks the file against
    stream     making an export, recording it in the audit log, finding its manifest again
    cli        `haven export …`: the file and `<file>.manifest.json`, both or neither

(Nothing is imported here, so that `haven`'s other commands do not load the database layer.)"""

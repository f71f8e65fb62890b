"""The `haven` commands an operator runs by hand, run as they are: a process of their own, its
settings from the environment."""

from __future__ import annotations

import os
import subprocess

from haven.localstack import HAVEN


def _haven(*args: str, database_url: str, cwd) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}, "HAVEN_DATABASE_URL": database_url}
    return subprocess.run([HAVEN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_export_writes_the_file_and_its_manifest(sqlite_db, tmp_path):
    done = _haven("export", "ledger", "--from", "2026-01-01", "--to", "2026-01-02", "--out", str(tmp_path / "out"),
                  database_url=sqlite_db.url, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 2 and written[1] == f"{written[0]}.manifest.json"


def test_an_export_that_cannot_be_made_says_why_and_writes_nothing(sqlite_database, tmp_path):
    # A database with no policy stored: the currencies' minor units are unknown.
    done = _haven("export", "ledger", "--from", "2026-01-01", "--to", "2026-01-02", "--out", str(tmp_path / "out"),
                  database_url=sqlite_database, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("haven export: no policy is stored")
    assert "Traceback" not in done.stderr
    assert not any((tmp_path / "out").iterdir())


def test_audit_verify_passes_on_an_intact_log(sqlite_database, tmp_path):
    done = _haven("audit", "verify", database_url=sqlite_database, cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout


def test_a_command_haven_does_not_have_is_refused(sqlite_database, tmp_path):
    done = _haven("wrker", database_url=sqlite_database, cwd=tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_staff_puts_the_first_administrator_on_the_roster_and_refuses_a_second_spelling(sqlite_db, tmp_path):
    person = ("--name", "Admin One", "--email", "admin@fund.example.org", "--role", "admin")
    done = _haven("staff", "idp-7f3a", *person, database_url=sqlite_db.url, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("added idp-7f3a"), done.stderr
    again = _haven("staff", "IDP-7F3A", *person, database_url=sqlite_db.url, cwd=tmp_path)
    assert again.returncode == 1 and "same name as 'idp-7f3a'" in again.stderr and "Traceback" not in again.stderr
    org = _haven("org", "ngo-l", "--name", "Look-alike", database_url=sqlite_db.url, cwd=tmp_path)
    assert org.returncode == 1 and "same name as the registered organisation 'ngo-1'" in org.stderr

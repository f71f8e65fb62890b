"""The fund's promises against an adversary (issue 18): the caps hold where money is committed,
however requests race and however the defender's pseudonym is written; people are compared as
the roster knows them, however their subject or organisation is spelled."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from activities.budget import BudgetReservations
from haven import ledger
from haven.case_events import OVER_CAP, MoneyCaps, ReservationRequest
from haven.db import utcnow
from haven.db.models import AuditEvent, GrantRequestRecord, LedgerEntry, StaffMember
from haven.identifiers import canonical, person_key, same
from haven.intake import defender_ref
from haven.lifecycle import Status
from haven.money import Money
from tests.api_harness import BODY, assert_problem
from tests.conftest import TEST_ISSUER
from tests.harness import caseworker, director
from tests.ledger_checks import assert_ledger_balances
from temporalio.exceptions import ApplicationError

# One defender, written as an adversary (or a hurried intermediary) would write them.
SPELLINGS = [
    "falcon-17",
    "FALCON-17",
    "ｆａｌｃｏｎ－１７",  # fullwidth
    "fal\u200bcon-17",  # a zero-width space
    "falcon\u201017",  # U+2010 HYPHEN
    "falcon\u201117",  # U+2011 NON-BREAKING HYPHEN
    "f\u0430lcon-17",  # CYRILLIC SMALL LETTER A
    "  falcon-17 ",
    "falc\u043en\u2013l7",  # Cyrillic o, an en dash, l for 1
    "fa\u00adlcon-17",  # a soft hyphen
    "falcon-17\ufe0f",  # a variation selector
    "ＦＡＬＣＯＮ\u2011１７",
]
OTHERS = ["falcon-18", "falcon 17", "hawk-17", "fálcon-17", "falcon-177"]


def test_every_spelling_of_one_pseudonym_is_one_defender():
    refs = {defender_ref(spelling, b"key") for spelling in SPELLINGS}
    assert len(refs) == 1, {s: canonical(s) for s in SPELLINGS}
    assert all(defender_ref(other, b"key") not in refs for other in OTHERS)
    assert len({defender_ref(other, b"key") for other in OTHERS}) == len(OTHERS)


def test_digits_of_any_script_are_the_same_digits():
    for spelling in ("falcon-\u0661\u0667", "falcon-\u06f1\u06f7", "falcon-\u0967\u096d", "falcon-\U0001d7cf\U0001d7d5"):
        assert defender_ref(spelling, b"key") == defender_ref("falcon-17", b"key"), spelling


def test_subjects_that_read_the_same_are_one_person():
    for a, b in [("cw-1", "CW-1"), ("dir-1", "DIR-1"), ("dir-1", "Dir-1"), ("int-ngo-1", "int-ngo\u200b-1"), ("ngo-1", "NGO\u20111")]:
        assert same(a, b) and person_key("iss", a) == person_key("iss", b)
    assert not same("cw-1", "cw-2") and person_key("iss-a", "cw-1") != person_key("iss-b", "cw-1")


# --- caps where money is committed -----------------------------------------------------------


async def _request_row(db, n: int, pseudonym: str, amount_base: int, category: str = "legal_fees") -> str:
    """A stored request (as intake writes it) for the reservation activity to reserve."""
    now = utcnow()
    request_id = f"gr_cap{n:04d}"
    async with db.transaction() as session:
        policy_hash = await _a_policy_hash(session)
        session.add(
            GrantRequestRecord(
                id=request_id, organisation_id="ngo-1", submitted_by="int-1", idempotency_key=f"cap-{n}", body_hash="x",
                category=category, urgency="high", country="KE", threat_level="moderate", amount_minor=amount_base,
                currency="EUR", amount_base_minor=amount_base, tranche_count=1, rail="manual", policy_hash=policy_hash,
                defender_ref=defender_ref(pseudonym, b"index-key"), sensitive={}, status=Status.APPROVED, status_seq=1,
                escalated=False, follow_up_overdue=False, created_at=now, updated_at=now,
            )  # fmt: skip
        )
    return request_id


async def _a_policy_hash(session) -> str:
    from haven.db.models import PolicyRecord

    return await session.scalar(select(PolicyRecord.hash).limit(1))


async def _reserve(db, request_id: str, category: str, amount_base: int, caps: MoneyCaps) -> int | None:
    """Runs the reservation activity as the workflow does (retried while SQLite's single writer is
    busy); None when it reserved, else how much still fitted."""
    order = ReservationRequest(
        request_id=request_id, number=1, category=category, amount_base_minor=amount_base,
        amount=Money(minor_units=amount_base, currency="EUR"), rate_to_base=Decimal(1), at=utcnow(), caps=caps,
    )  # fmt: skip
    activity = BudgetReservations(db)
    while True:
        try:
            await activity.reserve_budget(order)
            return None
        except ApplicationError as error:
            assert error.type == OVER_CAP, error
            return int(error.details[0])
        except Exception as error:  # noqa: BLE001 - "database is locked": Temporal retries the activity
            if "locked" not in str(error):
                raise
            await asyncio.sleep(0.01)


async def _committed_to(db, pseudonym: str) -> int:
    ref = defender_ref(pseudonym, b"index-key")
    async with db.sessions() as session:
        rows = (
            await session.execute(
                select(LedgerEntry.kind, func.sum(LedgerEntry.amount_base_minor))
                .join(GrantRequestRecord, GrantRequestRecord.id == LedgerEntry.request_id)
                .where(GrantRequestRecord.defender_ref == ref)
                .group_by(LedgerEntry.kind)
            )
        ).all()
    sums = {kind: int(total) for kind, total in rows}
    return sums.get("reservation", 0) - sums.get("release", 0) - sums.get("refund", 0) - sums.get("reversal", 0)


CAPS = MoneyCaps(grant=750_000, defender_12_months=1_000_000)


async def test_concurrent_reservations_for_one_defender_never_pass_the_cap(db):
    """Twelve requests of EUR 6,000 for one defender, each pseudonym written another way, in two
    categories (so two allocation locks), reserved all at once: one fits under EUR 10,000."""
    ids = [
        (await _request_row(db, n, spelling, 600_000, category), category)
        for n, (spelling, category) in enumerate(zip(SPELLINGS, ["legal_fees", "safe_housing"] * 6))
    ]
    results = await asyncio.gather(*(_reserve(db, request_id, category, 600_000, CAPS) for request_id, category in ids))
    assert results.count(None) == 1, results
    assert sorted(r for r in results if r is not None) == [400_000] * 11
    assert await _committed_to(db, "falcon-17") == 600_000
    await assert_ledger_balances(db)


async def test_what_still_fits_can_be_reserved_and_nothing_more(db):
    first = await _request_row(db, 1, "falcon-17", 600_000)
    second = await _request_row(db, 2, "FALCON\u201117", 600_000, "secure_communications")
    assert await _reserve(db, first, "legal_fees", 600_000, CAPS) is None
    assert await _reserve(db, second, "secure_communications", 600_000, CAPS) == 400_000
    # Refused: nothing was written for it.
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.request_id == second)) == 0
    assert await _reserve(db, second, "secure_communications", 400_000, CAPS) is None
    assert await _committed_to(db, "falcon-17") == 1_000_000
    # Money that came back makes room again; a grant's own cap holds too.
    third = await _request_row(db, 3, "falcon-17", 100_000)
    assert await _reserve(db, third, "legal_fees", 100_000, CAPS) == 0
    assert await _reserve(db, third, "legal_fees", 100_000, MoneyCaps(grant=50_000, defender_12_months=10**9)) == 50_000


async def test_requests_racing_for_one_defender_are_decided_again_for_what_still_fits(harness):
    """Three EUR 6,000 requests for the same defender, assessed before any was granted and each
    approved in full: the first is paid, the others go back to the caseworkers with what still fits,
    and an approval above it is refused."""
    handles = [await harness.submit(amount={"minor_units": 600_000, "currency": "EUR"}, defender={"pseudonym": p})
               for p in ("falcon-17", "Falcon\u200b-17", "f\u0430lcon\u201017")]  # fmt: skip
    for handle in handles:
        state = await harness.until(handle, Status.AWAITING_DECISION)
        assert state.risk.prior_grants_12_months == 0
    for handle in handles:  # two caseworkers and a director each (EUR 6,000 is above EUR 5,000)
        await asyncio.gather(*(harness.approve(handle, actor, 600_000) for actor in (caseworker(1), caseworker(2), director())))
    states = [await harness.until(h, lambda s: s.status in (Status.PAYMENT_PENDING, Status.AWAITING_DECISION)) for h in handles]
    assert [s.status for s in states].count(Status.PAYMENT_PENDING) == 1
    back = [h for h, s in zip(handles, states) if s.status == Status.AWAITING_DECISION]
    for handle in back:
        state = await harness.state(handle)
        refused = [e for e in state.timeline if e.action == "caps_exceeded"]
        assert refused and refused[-1].facts["room_base_minor"] == 400_000
        assert state.approvals == [] and state.granted is None
        record = await harness.until_recorded(handle.id, Status.AWAITING_DECISION)
        assert record.granted_minor is None and record.decision_due_at is not None
        reason = await harness.refused(handle, *_approval(caseworker(3), 500_000))
        assert "above what may be granted" in reason
    # The second gets what still fits; the third then finds nothing left.
    await asyncio.gather(*(harness.approve(back[0], a, 400_000) for a in (caseworker(3), caseworker(4))))
    await harness.until(back[0], Status.PAYMENT_PENDING)
    await asyncio.gather(*(harness.approve(back[1], a, 400_000) for a in (caseworker(3), caseworker(4))))
    state = await harness.until(back[1], lambda s: [e.action for e in s.timeline].count("caps_exceeded") == 2)
    assert state.status == Status.AWAITING_DECISION
    assert [e for e in state.timeline if e.action == "caps_exceeded"][-1].facts["room_base_minor"] == 0
    await harness.reject(back[1], caseworker(5), "Nothing is left under this defender's cap this year.")
    assert await _committed_to(harness.db, "falcon-17") == 1_000_000


def _approval(actor, minor_units: int):
    from haven.grant_request import DecisionCommand
    from workflows.grant_request import GrantRequestWorkflow

    return GrantRequestWorkflow.decide, DecisionCommand(actor=actor, kind="approve", amount=Money(minor_units=minor_units, currency="EUR"))


async def test_earlier_grants_under_another_spelling_count_in_the_risk_assessment(harness):
    first = await harness.submit(defender={"pseudonym": "heron-4"})
    await harness.until(first, Status.AWAITING_DECISION)
    await harness.approve(first, caseworker(), 150_000)
    await harness.until(first, Status.PAYMENT_PENDING)
    for spelling in ["HERON-4", "ｈｅｒｏｎ－４", "h\u0435ron\u20114", "her\u200bon-4", "heron-4\u00ad"]:
        handle = await harness.submit(defender={"pseudonym": spelling})
        state = await harness.until(handle, Status.AWAITING_DECISION)
        assert (state.risk.prior_grants_12_months, state.risk.prior_granted_base_12_months) == (1, 150_000), spelling
        assert state.risk.factors["prior_grants"] == 10
        await harness.reject(handle, caseworker(), "Covered by the first grant.")
    other = await harness.submit(defender={"pseudonym": "heron-5"})
    assert (await harness.until(other, Status.AWAITING_DECISION)).risk.prior_grants_12_months == 0
    await harness.reject(other, caseworker())
    await harness.payment_failed(first)


async def test_the_intermediary_is_told_when_a_pseudonym_matched_an_earlier_request(api):
    first = await api.submit({**BODY, "defender": {"pseudonym": "owl-3"}})
    assert first.json()["earlier_requests_for_defender"] == 0
    again = await api.submit({**BODY, "defender": {"pseudonym": "ＯＷＬ\u20113"}})
    assert again.status_code == 202 and again.json()["earlier_requests_for_defender"] == 1
    # Another organisation's requests are not theirs to learn of.
    other = await api.submit({**BODY, "defender": {"pseudonym": "owl-3"}}, org="ngo-2")
    assert other.json()["earlier_requests_for_defender"] == 0
    unrelated = await api.submit({**BODY, "defender": {"pseudonym": "owl-33"}})
    assert unrelated.json()["earlier_requests_for_defender"] == 0


# --- people as the roster knows them ------------------------------------------------------------


async def _roster(db, subject: str, roles: list[str], active: bool = True) -> None:
    async with db.transaction() as session:
        now = utcnow()
        session.add(StaffMember(issuer=TEST_ISSUER, subject=subject, subject_key=canonical(subject), name=subject,
                                email=f"{subject.lower()}@fund.example.org", roles=roles, active=active,
                                created_at=now, updated_at=now))  # fmt: skip


async def _waiting(api, amount: int = 600_000, org: str = "ngo-1") -> str:
    response = await api.submit({**BODY, "amount": {"minor_units": amount, "currency": "EUR"}}, org=org)
    request_id = response.json()["id"]
    await api.until_status(request_id, "awaiting_decision")
    return request_id


def _decide(api, request_id: str, headers: dict, minor_units: int = 600_000):
    body = {"kind": "approve", "amount": {"minor_units": minor_units, "currency": "EUR"}}
    return api.http.post(f"/v1/grant-requests/{request_id}/decisions", json=body, headers=headers)


async def _audit_count(api) -> int:
    async with api.db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(AuditEvent))


async def test_a_token_whose_subject_is_not_on_the_roster_cannot_act(api):
    request_id = await _waiting(api)
    before = await _audit_count(api)
    for subject in ("CW-1", "Cw-1", "cw-1\u200b", "cw\u20111", "с\u0077-1", "cw-404", "DIR-1", "Dir-1", "FIN-1"):
        role = "director" if subject.lower().startswith("dir") else "finance" if subject.lower().startswith("fin") else "caseworker"
        response = await _decide(api, request_id, api.token(role, subject))
        problem = assert_problem(response, 403, "forbidden")
        assert "roster" in problem["detail"], problem
    assert await _audit_count(api) == before
    state = await api.until_status(request_id, "awaiting_decision")
    assert state["decisions"] == []


async def test_an_inactive_or_unrostered_role_cannot_act(api):
    await _roster(api.db, "cw-gone", ["caseworker"], active=False)
    await _roster(api.db, "cw-only", ["caseworker"])
    request_id = await _waiting(api, 150_000)
    assert_problem(await _decide(api, request_id, api.token("caseworker", "cw-gone"), 150_000), 403, "forbidden")
    # The token claims director; the roster says caseworker only: the director role is not taken.
    assert_problem(
        await api.http.get("/v1/reconciliations", headers=api.token("director", "cw-only")), 403, "forbidden"
    )
    # Deactivated between two actions: the next is refused.
    assert (await api.http.get("/v1/grant-requests", headers=api.token("caseworker", "cw-only"))).status_code == 200
    async with api.db.transaction() as session:
        (await session.get(StaffMember, (TEST_ISSUER, "cw-only"))).active = False
    assert_problem(await api.http.get("/v1/grant-requests", headers=api.token("caseworker", "cw-only")), 403, "forbidden")


async def test_four_eyes_and_the_director_count_people_not_spellings(api):
    request_id = await _waiting(api)  # EUR 6,000: two caseworkers and a director
    assert (await _decide(api, request_id, api.token("director", "dir-1"))).status_code == 200
    for spelling in ("DIR-1", "Dir-1", "dir\u200b-1"):
        assert_problem(await _decide(api, request_id, api.token("director", spelling)), 403, "forbidden")
    again = await _decide(api, request_id, api.token("director", "dir-1"))
    assert_problem(again, 409, "action-refused")
    view = await api.until_status(request_id, "awaiting_decision")
    assert len([d for d in view["decisions"] if d["kind"] == "approve"]) == 1


async def test_the_roster_refuses_a_second_spelling_of_someone_on_it(api):
    admin = api.token("admin", "adm-1")
    body = {"name": "Amina K.", "email": "amina@fund.example.org", "roles": ["caseworker"]}
    for spelling in ("CW-1", "Cw-1", "cw-l", "CW-l"):
        assert_problem(await api.http.put(f"/v1/staff/{spelling}", json=body, headers=admin), 409, "roster-refused")
    for invisible in ("cw-1%E2%80%8B", "%D1%81w-1"):  # a zero-width space; a Cyrillic es
        assert (await api.http.put(f"/v1/staff/{invisible}", json=body, headers=admin)).status_code == 422
    # Two spellings of a new person added at once: one is added, the other refused.
    both = await asyncio.gather(*(api.http.put(f"/v1/staff/{s}", json=body, headers=admin) for s in ("kw-5", "KW-5", "Kw-5")))
    assert sorted(r.status_code for r in both) == [201, 409, 409], [r.text for r in both]
    async with api.db.sessions() as session:
        keys = [m.subject_key for m in await session.scalars(select(StaffMember))]
    assert len(keys) == len(set(keys))
    # Organisations likewise.
    org = {"name": "Another NGO", "trust_level": "standard"}
    assert_problem(await api.http.put("/v1/organisations/ngo-l", json=org, headers=admin), 409, "organisation-refused")


async def test_a_decider_who_is_the_submitter_or_of_its_organisation_however_spelled_is_refused(api):
    request_id = await _waiting(api, 150_000)  # submitted by int-ngo-1 of ngo-1
    await _roster(api.db, "INT-NGO-1", ["caseworker"])  # the same name as the submitter
    await _roster(api.db, "cw-partner", ["caseworker"])
    refused = await _decide(api, request_id, api.token("caseworker", "INT-NGO-1"), 150_000)
    assert "submitted" in assert_problem(refused, 409, "action-refused")["detail"]
    for claim in ("NGO-1", "ngo\u20111", "ｎｇｏ-1", "ngo-1\u200b"):
        refused = await _decide(api, request_id, api.token("caseworker", "cw-partner", claim), 150_000)
        assert "own organisation" in assert_problem(refused, 409, "action-refused")["detail"], claim
    # An intermediary whose claim names its organisation another way is still scoped to it.
    listed = await api.http.get("/v1/grant-requests", headers=api.token("intermediary", "int-ngo-1", "NGO-1"))
    assert [r["id"] for r in listed.json()["items"]] == [request_id]
    assert (await _decide(api, request_id, api.token("caseworker", "cw-1"), 150_000)).status_code == 200


# --- stored requests re-indexed --------------------------------------------------------------------


def test_the_migration_reindexes_stored_pseudonyms_and_keys_the_roster_by_issuer(tmp_path):
    """A database written by the build before (pseudonyms hashed after case folding only, the
    roster keyed by subject) is brought to one defender per name and one person per subject."""
    import hashlib
    import hmac

    import sqlalchemy as sa
    from alembic import command

    from haven.case_keys import SENSITIVE
    from haven.db.migrate import alembic_config
    from haven.keys import pseudonym_index_key
    from tests.conftest import TEST_CASE_KEYS, make_settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    settings = make_settings(tmp_path, url)
    config = alembic_config(url)
    config.attributes["settings"] = settings
    command.upgrade(config, "0006")
    key = pseudonym_index_key(settings)
    old_ref = lambda p: hmac.new(key, " ".join(p.casefold().split()).encode(), hashlib.sha256).hexdigest()  # noqa: E731
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO organisations (id, name, trust_level, active, created_at) VALUES ('ngo-1', 'n', 'standard', 1, :t)"), {"t": now})
        connection.execute(sa.text("INSERT INTO policy_versions (hash, name, content, created_at) VALUES ('p', 'p', '{}', :t)"), {"t": now})
        connection.execute(sa.text("INSERT INTO staff_members (subject, name, email, roles, active, created_at, updated_at) "
                                   "VALUES ('cw-1', 'c', 'c@x.org', '[\"caseworker\"]', 1, :t, :t)"), {"t": now})  # fmt: skip
        for n, pseudonym in enumerate(["falcon-17", "ｆａｌｃｏｎ－１７", "f\u0430lcon\u201017", "hrd-0042", "FALCON-17"]):
            request_id = f"gr_old{n}"
            sealer, case_key = TEST_CASE_KEYS.new(request_id, now)
            sealed = sealer.seal(SENSITIVE, {"defender": {"pseudonym": pseudonym}, "payee": {}, "threat_summary": "t", "purpose": "p"})
            connection.execute(
                sa.text(
                    "INSERT INTO grant_requests (id, organisation_id, submitted_by, idempotency_key, body_hash, category, urgency,"
                    " country, threat_level, amount_minor, currency, amount_base_minor, tranche_count, rail, policy_hash,"
                    " defender_ref, sensitive, status, status_seq, escalated, follow_up_overdue, created_at, updated_at)"
                    " VALUES (:id, 'ngo-1', 'INT-1', :id, 'h', 'legal_fees', 'high', 'KE', 'low', 1, 'EUR', 1, 1, 'manual', 'p',"
                    " :ref, :sensitive, 'closed', 1, 0, 0, :t, :t)"
                ),
                {"id": request_id, "ref": old_ref(pseudonym), "sensitive": f'"{sealed}"', "t": now},
            )
            wrapped = None if n >= 3 else case_key.wrapped_key  # the last two were erased
            connection.execute(
                sa.text("INSERT INTO case_keys (request_id, master_key_id, wrapped_key, created_at) VALUES (:id, :k, :w, :t)"),
                {"id": request_id, "k": case_key.master_key_id, "w": wrapped, "t": now},
            )
    assert len({old_ref(p) for p in ["falcon-17", "ｆａｌｃｏｎ－１７", "f\u0430lcon\u201017"]}) == 3  # three defenders before
    command.upgrade(config, "head")
    with engine.connect() as connection:
        refs = dict(connection.execute(sa.text("SELECT id, defender_ref FROM grant_requests")).all())
        staff = connection.execute(sa.text("SELECT issuer, subject, subject_key FROM staff_members")).one()
        submitter = connection.execute(sa.text("SELECT DISTINCT submitted_by_person FROM grant_requests")).scalar_one()
        organisation_key = connection.execute(sa.text("SELECT id_key FROM organisations")).scalar_one()
    assert refs["gr_old0"] == refs["gr_old1"] == refs["gr_old2"] == defender_ref("falcon-17", key)
    # Erased: nothing opens them. One had the old hash of a request that still opens, and takes its
    # new one; the other is left as it was.
    assert refs["gr_old4"] == defender_ref("falcon-17", key)
    assert refs["gr_old3"] == old_ref("hrd-0042") != defender_ref("hrd-0042", key)
    assert tuple(staff) == (TEST_ISSUER, "cw-1", "cw-l")
    assert submitter == person_key(TEST_ISSUER, "int-1")
    assert organisation_key == canonical("ngo-1")
    engine.dispose()


async def _at_once(save, refusal: type[Exception], names) -> list[str]:
    """Saves every name at the same moment; "added" or "refused" for each."""

    async def one(name: str) -> str:
        try:
            await save(name)
            return "added"
        except refusal:
            return "refused"

    return list(await asyncio.gather(*(one(name) for name in names)))


async def test_two_spellings_saved_at_once_make_one_person(db):
    """On both databases: concurrent saves of one new person under different spellings."""
    from haven.grant_request import Actor, Role
    from haven.roster import RosterRefused, StaffMemberInput, save_staff_member

    data = StaffMemberInput(name="Amina K.", email="amina@fund.example.org", roles=["caseworker"])
    admin = Actor(subject="adm-1", roles=[Role.ADMIN])

    outcomes = await _at_once(
        lambda subject: save_staff_member(db, admin, TEST_ISSUER, subject, data), RosterRefused, ("amina-k", "AMINA-K", "Amina-K", "amina-K")
    )
    assert sorted(outcomes) == ["added", "refused", "refused", "refused"]
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(StaffMember).where(StaffMember.subject_key == canonical("amina-k"))) == 1


async def test_two_spellings_of_one_organisation_registered_at_once_make_one(db):
    from haven.db.models import Organisation
    from haven.grant_request import Actor, Role
    from haven.organisations import OrganisationInput, OrganisationRefused, save_organisation

    admin, data = Actor(subject="adm-1", roles=[Role.ADMIN]), OrganisationInput(name="Another NGO", trust_level="standard")

    outcomes = await _at_once(
        lambda organisation_id: save_organisation(db, admin, organisation_id, data), OrganisationRefused, ("ngo-11", "ngo-1l", "ngo-l1", "ngo-ll")
    )
    assert sorted(outcomes) == ["added", "refused", "refused", "refused"]
    async with db.sessions() as session:
        ids = [o for o in await session.scalars(select(Organisation.id)) if canonical(o) == canonical("ngo-11")]
    assert len(ids) == 1


# --- what the caps path must not break ------------------------------------------------------------


async def _paid_elsewhere_first(harness):
    """A (EUR 6,000) fails to pay and its money is released; B (EUR 6,000, the same defender) then
    takes most of the defender's cap; finance retries A, which the caps refuse."""
    a = await harness.submit(amount={"minor_units": 600_000, "currency": "EUR"}, defender={"pseudonym": "owl-9"})
    b = await harness.submit(amount={"minor_units": 600_000, "currency": "EUR"}, defender={"pseudonym": "OWL-9"})
    for handle in (a, b):
        await harness.until(handle, Status.AWAITING_DECISION)
    await asyncio.gather(*(harness.approve(a, x, 600_000) for x in (caseworker(1), caseworker(2), director())))
    await harness.until(a, Status.PAYMENT_PENDING)
    await harness.payment_failed(a)
    await harness.until(a, Status.PAYMENT_FAILED)
    await asyncio.gather(*(harness.approve(b, x, 600_000) for x in (caseworker(1), caseworker(2), director())))
    await harness.until(b, Status.PAYMENT_PENDING)
    await harness.retry(a)
    state = await harness.until(a, Status.AWAITING_DECISION)
    assert [e.facts.get("room_base_minor") for e in state.timeline if e.action == "caps_exceeded"] == [400_000]
    return a, b


async def test_a_retry_refused_for_the_caps_and_approved_again_pays_the_new_amount(harness):
    a, b = await _paid_elsewhere_first(harness)
    await asyncio.gather(*(harness.approve(a, x, 400_000) for x in (caseworker(3), caseworker(4))))
    await harness.until(a, Status.PAYMENT_PENDING)
    [row] = await harness.payments(a.id)
    assert (row.amount_minor, row.amount_base_minor) == (400_000, 400_000)
    await harness.pay(a, 400_000)
    await harness.until(a, Status.FOLLOW_UP)
    await harness.pay(b, 600_000)
    await harness.until(b, Status.FOLLOW_UP)
    assert await _committed_to(harness.db, "owl-9") == 1_000_000  # and the harness checks the ledger balances


async def test_after_a_retry_refused_for_the_caps_the_partner_can_withdraw(harness):
    a, b = await _paid_elsewhere_first(harness)
    await harness.withdraw(a)
    await harness.until(a, Status.WITHDRAWN)
    await harness.payment_failed(b)


async def test_a_withdrawal_while_the_reservation_runs_pays_nothing(harness):
    """AWAITING_FUNDS accepts a withdrawal while the workflow tries the reservation again (the
    allocation's row is held so that the attempt is in flight): the money goes back, nothing pays,
    and the workflow never fails a task."""
    if harness.db.url.startswith("sqlite"):
        pytest.skip("holding one allocation row while others write needs PostgreSQL's row locks")
    import psycopg
    from temporalio.api.enums.v1 import EventType

    from tests.test_ledger import _set_budget
    from workflows.grant_request import GrantRequestWorkflow

    await _set_budget(harness.db, "legal_fees", 100_000)
    a = await harness.submit(defender={"pseudonym": "kite-3"})
    await harness.until(a, Status.AWAITING_DECISION)
    await harness.approve(a, caseworker(), 150_000)
    await harness.until(a, Status.AWAITING_FUNDS)
    await _set_budget(harness.db, "legal_fees", 10**9)
    async with await psycopg.AsyncConnection.connect(harness.db.url.replace("postgresql+psycopg://", "postgresql://")) as hold:
        await hold.execute("SELECT * FROM budget_allocations WHERE category = 'legal_fees' FOR UPDATE")
        await a.signal(GrantRequestWorkflow.funds_changed)
        await asyncio.sleep(1.0)  # the reservation now waits for the row
        await harness.withdraw(a)
        await hold.rollback()
    state = await harness.until(a, lambda s: any(e.action == "budget_released" for e in s.timeline))
    assert state.status == Status.WITHDRAWN
    assert await harness.payments(a.id) == []
    assert [r.status for r in await harness.reservations(a.id)] == ["released"]
    failed = [e async for e in a.fetch_history_events() if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
    assert failed == []


async def test_a_partner_is_not_told_what_other_partners_hold_for_the_defender(api):
    first = (await api.submit({**BODY, "defender": {"pseudonym": "wren-2"}}, org="ngo-2")).json()["id"]
    await api.until_status(first, "awaiting_decision")
    mine = (await api.submit({**BODY, "defender": {"pseudonym": "WREN-2"}})).json()["id"]
    await api.until_status(mine, "awaiting_decision")
    seen = (await api.http.get(f"/v1/grant-requests/{mine}", headers=api.intermediary())).json()
    assert [e["facts"] for e in seen["timeline"] if e["action"] == "risk_assessed"] == [{}]
    staff = (await api.http.get(f"/v1/grant-requests/{mine}", headers=api.token("caseworker", "cw-1"))).json()
    assert [e["facts"]["factors"]["prior_grants"] for e in staff["timeline"] if e["action"] == "risk_assessed"] == [0]

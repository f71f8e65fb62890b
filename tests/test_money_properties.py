"""The money rules as properties (issue 18, finding 5): a Hypothesis state machine drives random
interleavings of what happens to grant requests' money — submissions (the defender's pseudonym
written in many ways), approvals, reservations, payments and their failures, retries, refunds,
Stripe reversals (before and after refunds, duplicated, out of order, before the payment is
recorded), withdrawals and allocation changes, some of them at once — through the real activities
and ledger functions against the real database (SQLite and PostgreSQL; not Temporal, which would
be far too slow for this many steps), and after every step checks that:

- every allocation adds up: allocated = available + reserved + net paid, its running totals are
  the sums of its entries, and no bucket is below zero;
- per tranche, the money back (refunds and reversals) never exceeds what was paid, and a reversal
  Stripe reported is never lost;
- each defender's total over the last 12 months (reserved and paid less what came back), however
  their pseudonym was written, stays within the policy's cap, and each grant within its category's;
- the audit chain verifies.

Each step done alone is also checked against what the rules say it must do (a refund more than
was paid is refused, one that fits is recorded; a reservation is refused exactly when it does not
fit under the caps or the budget; an allocation below what is committed is refused).

The examples are the same on every run (derandomized). `HAVEN_PROPERTY_EXAMPLES=500 pytest
tests/test_money_properties.py` runs that many, new ones each time (`--hypothesis-seed=N` repeats a
run); `HAVEN_PROPERTY_STEPS` sets the steps per example. Steps at once race for real, so a failure
that depends on a race may not replay exactly: Hypothesis then reports it as flaky, with the steps
that found it."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

import psycopg
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from temporalio.exceptions import ApplicationError

from activities.budget import BudgetReservations
from activities.payments import Disbursements
from activities.records import CaseRecords
from activities.stripe_events import StripeEvents
from haven import ledger
from haven.audit import record_change
from haven.audit_chain import verify_chain
from haven.case_events import (
    NO_FUNDS, OVER_CAP, CaseEvent, DecisionEntry, MoneyCaps, PaymentInstruction, PaymentUpdate, RequestProjection,
    ReservationRelease, ReservationRequest, TransferNotice,
)  # fmt: skip
from haven.db import utcnow
from haven.db.models import BudgetAllocation, BudgetReservation, GrantRequestRecord, LedgerEntry, Payment, ReconciliationFinding
from haven.grant_request import SYSTEM, PaymentRail
from haven.intake import Intake, IntakeRefused, defender_ref
from haven.lifecycle import Status
from haven.money import Money
from haven.reconciliation import FindingKind
from haven.stripe_events import TRANSFER_REVERSED
from policies import rules
from tests.conftest import GENEROUS_PERIOD, TEST_CASE_KEYS, _postgres_url, prepare_database
from tests.harness import FINANCE, caseworker, intermediary, submission

INDEX_KEY = b"index-key"
START, END = GENEROUS_PERIOD
CATEGORIES = ["legal_fees", "secure_communications", "safe_housing"]
DEFENDERS = ["falcon-17", "heron-4", "owl-3"]  # each has a hyphen and a letter with a Cyrillic look-alike


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _cyrillic(text: str) -> str:
    for latin, cyrillic in (("o", "\u043e"), ("a", "\u0430"), ("e", "\u0435")):
        if latin in text:
            return text.replace(latin, cyrillic, 1)
    return text


# How an intermediary (or an adversary) may write the same pseudonym; several may apply at once.
SPELLINGS = {
    "upper": str.upper,
    "title": str.title,
    "fullwidth": _fullwidth,
    "zero_width_space": lambda s: s[:2] + "\u200b" + s[2:],
    "hyphen_2010": lambda s: s.replace("-", "\u2010"),
    "hyphen_2011": lambda s: s.replace("-", "\u2011"),
    "cyrillic": _cyrillic,
    "spaces": lambda s: f"  {s} ",
}


def spelled(name: str, how: list[str]) -> str:
    for step in how:
        name = SPELLINGS[step](name)
    return name


# --- retried as Temporal retries an activity --------------------------------------------------

RETRIED: Counter[str] = Counter()
DONE: Counter[str] = Counter()  # what the steps did, for the summary line


def _transient(error: Exception) -> str | None:
    text = str(error)
    for kind, mark in (("sqlite_locked", "database is locked"), ("pg_deadlock", "deadlock detected"),
                       ("pg_serialization", "could not serialize")):  # fmt: skip
        if mark in text:
            return kind
    return None


async def persist(call):
    """Runs one transaction's work, again while the database turns it away for a moment (SQLite's
    single writer, a PostgreSQL deadlock): what Temporal does with a failed activity attempt."""
    for attempt in itertools.count():
        try:
            return await call()
        except DBAPIError as error:
            kind = _transient(error)
            if kind is None or attempt > 200:
                raise
            RETRIED[kind] += 1
            await asyncio.sleep(0.002 * min(attempt + 1, 20))


# --- the model: what the test knows it did --------------------------------------------------------


@dataclass
class Tranche:
    number: int
    amount: int  # minor units of the request's currency
    base: int
    state: str = "unpaid"  # unpaid | pending | paid | failed
    attempt: int = 0
    transfer: str | None = None  # the reference of the attempt under way or paid
    reversal_seen: bool = False  # Stripe reversed its transfer: it exists, so the attempt cannot fail
    touched: int = 0  # when a step last did something to it


@dataclass
class Req:
    n: int
    id: str
    defender: str
    category: str
    currency: str
    amount: int
    tranche_count: int
    rail: str
    seq: int = 1
    status: str = "awaiting"  # awaiting | approved | funds | paying | failed | done | withdrawn
    tranches: list[Tranche] = field(default_factory=list)
    number: int = 0  # the last reservation that was made
    held: bool = False
    room: int | None = None  # what still fitted under the caps when a reservation was refused
    attempts: dict[int, int] = field(default_factory=dict)  # per tranche number, kept when decided again
    touched: int = 0

    def unpaid(self) -> list[Tranche]:
        return [t for t in self.tranches if t.state != "paid"]

    def next_tranche(self) -> Tranche | None:
        return next((t for t in self.tranches if t.state != "paid"), None)

    @property
    def active(self) -> bool:
        return self.status not in ("done", "withdrawn")


# Which requests a step of the request's own workflow can be taken on.
WHO = {
    "approve": lambda r: r.status == "awaiting" and (r.room is None or r.room > 0),
    "reserve": lambda r: r.status in ("approved", "funds", "failed"),
    "reserve_twice": lambda r: r.status in ("approved", "funds", "failed"),
    "pay": lambda r: r.held and r.next_tranche() is not None,
    "fail": lambda r: r.held and r.next_tranche() is not None and not r.next_tranche().reversal_seen,
    "withdraw": lambda r: r.active and all(t.state != "pending" for t in r.tranches),
}
MOST_ACTIVE = 4  # requests under way at once, so that steps go deep rather than wide

# The kinds of step, weighted: a request's next step in its workflow (approved, reserved, its next
# tranche paid) most often; "reserve" also retries after a failed payment, with the next number.
STEPS = ["advance"] * 5 + ["submit"] * 2 + ["refund_and_reversal"] * 3 + ["pay", "refund", "refund", "reverse", "reverse", "reserve", "approve", "fail", "withdraw", "allocate"]  # fmt: skip
# At once: "reserve_twice" is the reservation activity run twice at the same time (Temporal starts
# a retry while an attempt that timed out still runs).
AT_ONCE = ["advance"] * 3 + ["refund", "reverse", "refund", "reverse", "refund_and_reversal_at_once", "reserve_twice", "pay",
                             "submit", "approve", "fail", "withdraw", "allocate"]  # fmt: skip


class MoneyMachine(RuleBasedStateMachine):
    """One fund, one fresh database per example."""

    new_database: ClassVar[Any]  # () -> (url, drop): set by the test
    policy: ClassVar[Any]

    def __init__(self):
        super().__init__()
        self.loop = asyncio.Runner()
        self.url, self.drop = self.new_database()
        self.db = self.run(prepare_database(self.url, self.policy, migrated=True))
        self.intake = Intake(self.db, _NoTemporal(), "q", self.policy, INDEX_KEY,
                             frozenset({PaymentRail.MANUAL, PaymentRail.STRIPE}), case_keys=TEST_CASE_KEYS)  # fmt: skip
        self.reservations = BudgetReservations(self.db)
        self.records = CaseRecords(self.db, "https://haven.example")
        self.disbursements = Disbursements(self.db, None, TEST_CASE_KEYS)
        self.stripe = StripeEvents(self.db, "https://haven.example")
        DONE["examples"] += 1
        self.requests: list[Req] = []
        self.stripe_seen: dict[str, int] = {}  # transfer -> the highest cumulative reversal delivered
        self.notices: list[TransferNotice] = []  # delivered, to deliver again
        self.refunds: dict[tuple[str, int], list[tuple[str, int]]] = {}  # tranche -> (reference, amount) recorded
        self.events = itertools.count(1)
        self.ticks = itertools.count(1)
        self.keys = itertools.count(1)

    def run(self, coroutine):
        return self.loop.run(coroutine)

    def teardown(self):
        try:
            self.run(self.db.dispose())
        finally:
            self.loop.close()
            self.drop()

    # --- helpers -----------------------------------------------------------------------------

    @property
    def fund(self):
        return self.policy.policy

    def _rate(self, currency: str):
        return self.fund.currencies[currency].rate_to_base

    async def _record(self, req: Req, action: str, status_to: Status, *, actor=SYSTEM, **parts) -> None:
        req.seq += 1
        event = CaseEvent(request_id=req.id, seq=req.seq, at=utcnow(), action=action, actor=actor,
                          status_from=Status.APPROVED, status_to=status_to, **parts)  # fmt: skip
        assert await persist(lambda: self.records.record_event(event)) is True

    async def _back(self, request_id: str, tranche: int) -> int:
        async with self.db.sessions() as session:
            return int(
                await session.scalar(
                    select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
                        LedgerEntry.request_id == request_id, LedgerEntry.tranche == tranche,
                        LedgerEntry.kind.in_([ledger.REFUND, ledger.REVERSAL]),
                    )  # fmt: skip
                )
            )

    async def _payment(self, request_id: str, tranche: int) -> Payment | None:
        async with self.db.sessions() as session:
            return await session.scalar(select(Payment).where(Payment.request_id == request_id, Payment.tranche == tranche))

    async def _entries_of(self, request_id: str) -> int:
        async with self.db.sessions() as session:
            return await session.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.request_id == request_id))

    async def _committed(self, req: Req) -> tuple[int, int]:
        """What is committed to the request and to its defender now, counted here from the entries."""
        sign = {ledger.RESERVATION: 1, ledger.RELEASE: -1, ledger.REFUND: -1, ledger.REVERSAL: -1}
        async with self.db.sessions() as session:
            rows = (
                await session.execute(
                    select(LedgerEntry.request_id, LedgerEntry.kind, LedgerEntry.amount_base_minor, GrantRequestRecord.created_at)
                    .join(GrantRequestRecord, GrantRequestRecord.id == LedgerEntry.request_id)
                    .where(GrantRequestRecord.defender_ref == defender_ref(req.defender, INDEX_KEY))
                )
            ).all()
        since = utcnow() - timedelta(days=365)
        to_request = sum(sign.get(r.kind, 0) * r.amount_base_minor for r in rows if r.request_id == req.id)
        to_defender = sum(sign.get(r.kind, 0) * r.amount_base_minor for r in rows if r.created_at >= since)
        return to_request, to_defender

    async def _allocation(self, category: str) -> BudgetAllocation:
        async with self.db.sessions() as session:
            return await session.get(BudgetAllocation, ledger.allocation_id(category, START))

    # --- the steps, each usable alone (exact: its outcome checked against the rules) or at once --

    async def submit(self, defender: str, how: list[str], category: str, currency: str, amount: int, tranches: int,
                     rail: str, old: bool) -> None:  # fmt: skip
        n = next(self.keys)
        payee = {"name": "Payee", "country": "KE", "rail": rail}
        if rail == PaymentRail.STRIPE:
            payee["stripe_account"] = "acct_payee1"
        body = submission(category=category, amount={"minor_units": amount, "currency": currency}, tranches=tranches,
                          defender={"pseudonym": spelled(defender, how)}, payee=payee)  # fmt: skip
        try:
            accepted = await persist(lambda: self.intake.submit(body, intermediary(), f"prop-{n}"))
        except IntakeRefused:
            return  # the policy could never grant it (above the category's cap in base units)
        record = accepted.record
        assert record.defender_ref == defender_ref(defender, INDEX_KEY), f"{spelled(defender, how)!r} is not {defender!r}"
        if old:  # submitted more than twelve months ago: outside the defender's window
            async def age():
                async with self.db.transaction() as session:
                    await session.execute(
                        update(GrantRequestRecord).where(GrantRequestRecord.id == record.id)
                        .values(created_at=utcnow() - timedelta(days=400))
                    )  # fmt: skip
            await persist(age)
        req = Req(n, record.id, defender, category, currency, amount, tranches, rail)
        self.requests.append(req)
        DONE["submitted"] += 1
        event = CaseEvent(request_id=req.id, seq=1, at=utcnow(), action="received", actor=SYSTEM,
                          status_from=Status.RECEIVED, status_to=Status.AWAITING_DECISION)  # fmt: skip
        assert await persist(lambda: self.records.record_event(event)) is True

    async def approve(self, req: Req, share: str) -> None:
        """Caseworkers approve the amount asked, less, or what still fitted when the caps refused."""
        amount = req.amount
        if share == "room" and req.room is not None and req.currency == self.fund.base_currency:
            amount = req.room
        elif share == "half":
            amount = req.amount // 2
        amount = max(amount, req.tranche_count)
        granted = Money(minor_units=amount, currency=req.currency)
        req.tranches = [
            Tranche(i + 1, part.minor_units, rules.to_base(self.fund, part), attempt=req.attempts.get(i + 1, 0))
            for i, part in enumerate(rules.split_into_tranches(granted, req.tranche_count))
        ]
        req.status, req.room = "approved", None
        await self._record(
            req, "decision_recorded", Status.APPROVED, actor=caseworker(1), decision=DecisionEntry(kind="approve", amount=granted),
            projection=RequestProjection(granted_minor=amount, granted_base_minor=sum(t.base for t in req.tranches)),
        )  # fmt: skip

    def _order(self, req: Req, number: int) -> ReservationRequest:
        unpaid = req.unpaid()
        return ReservationRequest(
            request_id=req.id, number=number, category=req.category, amount_base_minor=sum(t.base for t in unpaid),
            amount=Money(minor_units=sum(t.amount for t in unpaid), currency=req.currency), rate_to_base=self._rate(req.currency),
            at=utcnow(), caps=MoneyCaps(grant=self.fund.categories[req.category].max_grant,
                                        defender_12_months=self.fund.per_defender_cap_12_months),
        )  # fmt: skip

    async def _reserve_call(self, order: ReservationRequest) -> tuple[str, int | None]:
        try:
            await persist(lambda: self.reservations.reserve_budget(order))
            return "reserved", None
        except ApplicationError as error:
            if error.type == OVER_CAP:
                return "over_cap", int(error.details[0])
            assert error.type == NO_FUNDS, error
            return "no_funds", None

    async def reserve(self, req: Req, exact: bool, twice: bool = False) -> None:
        """The budget reservation (a first one, or the retry after a failed payment, with the next
        number; a refused one wrote nothing, so its number is used again). `twice`: two attempts of
        the activity at once, as Temporal may run a retry while a timed-out attempt still runs."""
        order = self._order(req, req.number + 1)
        if exact:
            to_request, to_defender = await self._committed(req)
            room = rules.room_under_caps(order.caps.grant, order.caps.defender_12_months, to_request, to_defender)
            available = ledger.available(await self._allocation(req.category))
            entries = await self._entries_of(req.id)
        if twice:
            finished: list[tuple[str, int | None]] = []

            async def attempt():
                finished.append(await self._reserve_call(order))

            await asyncio.gather(attempt(), attempt())
            async with self.db.sessions() as session:
                held = await session.scalar(
                    select(BudgetReservation.id).where(BudgetReservation.request_id == req.id, BudgetReservation.number == order.number)
                )
            # The attempt that finished last (Temporal's current one; the other had timed out) tells the
            # workflow what happened: reserved exactly when the reservation exists. (One that finished
            # first may have been refused before an allocation raised at the same time let the other in.)
            outcome = finished[-1]
            assert (outcome[0] == "reserved") == (held is not None), (finished, held)
        else:
            outcome = await self._reserve_call(order)
        if exact:
            if order.amount_base_minor > room:
                assert outcome == ("over_cap", room), (outcome, order.amount_base_minor, room)
            elif order.amount_base_minor > available:
                assert outcome == ("no_funds", None), (outcome, order.amount_base_minor, available)
            else:
                assert outcome == ("reserved", None), (outcome, order.amount_base_minor, room, available)
            if outcome[0] != "reserved":
                assert await self._entries_of(req.id) == entries, "a refused reservation wrote to the ledger"
        kind, room = outcome
        DONE[f"reserve:{kind}"] += 1
        if kind == "reserved":
            req.number, req.held, req.status = order.number, True, "paying"
        elif kind == "no_funds":
            req.status = "funds"
        elif any(t.state == "paid" for t in req.tranches):
            req.status = "done"  # caps reached after a tranche was paid: the rest is given up
        else:
            req.status, req.room, req.tranches = "awaiting", room, []  # back to the caseworkers

    async def _release(self, req: Req, reason: str) -> None:
        unpaid = req.unpaid()
        release = ReservationRelease(
            request_id=req.id, number=req.number, release_base_minor=sum(t.base for t in unpaid),
            amount=Money(minor_units=sum(t.amount for t in unpaid), currency=req.currency), rate_to_base=self._rate(req.currency),
            reason=reason, at=utcnow(),
        )  # fmt: skip
        await persist(lambda: self.reservations.release_budget(release))
        req.held = False

    async def _open(self, req: Req, tranche: Tranche) -> None:
        """The payment row of the tranche's next attempt, as the disbursement activity opens it."""
        tranche.attempt = req.attempts[tranche.number] = tranche.attempt + 1
        instruction = PaymentInstruction(
            request_id=req.id, tranche=tranche.number, attempt=tranche.attempt, ended_attempts=tranche.attempt - 1,
            rail=req.rail, amount=Money(minor_units=tranche.amount, currency=req.currency), amount_base_minor=tranche.base,
        )  # fmt: skip
        await persist(lambda: self.disbursements._open_payment(instruction))
        tranche.state = "pending"
        tranche.transfer = f"tr_{req.id[3:]}x{tranche.number}x{tranche.attempt}" if req.rail == PaymentRail.STRIPE else f"SEPA-{req.n}-{tranche.number}-{tranche.attempt}"  # fmt: skip

    async def pay(self, req: Req, confirm: bool, exact: bool) -> None:
        """Pays the next tranche: its payment row opened, then (now or in a later step) recorded
        paid by the records activity, which moves it from reserved to paid in the ledger."""
        tranche = req.next_tranche()
        if tranche.state in ("unpaid", "failed"):
            await self._open(req, tranche)
        if not confirm:
            return
        seen = self.stripe_seen.get(tranche.transfer, 0)
        await self._record(req, "payment_recorded", Status.PAID,
                           payment=PaymentUpdate(tranche=tranche.number, status="paid", reference=tranche.transfer,
                                                 paid_on=utcnow().date()))  # fmt: skip
        tranche.state = "paid"
        self._touch(req, tranche)
        DONE["paid"] += 1
        if exact and seen:  # a reversal Stripe reported before the payment was recorded is applied with it
            assert await self._back(req.id, tranche.number) == min(seen, tranche.amount)
        if req.next_tranche() is None:
            await self._release(req, "tranches_finished")
            req.status = "done"

    async def fail(self, req: Req) -> None:
        """The rail refused the next tranche: recorded failed, the unpaid budget released."""
        tranche = req.next_tranche()
        if tranche.state in ("unpaid", "failed"):
            await self._open(req, tranche)
        await self._record(req, "payment_failed", Status.PAYMENT_FAILED,
                           payment=PaymentUpdate(tranche=tranche.number, status="failed", failure_reason="refused"))  # fmt: skip
        tranche.state, tranche.transfer = "failed", None
        DONE["failed"] += 1
        await self._release(req, "payment_failed")
        req.status = "failed"

    async def withdraw(self, req: Req) -> None:
        if req.held:
            await self._release(req, "withdrawn")
        req.status = "withdrawn"
        await self._record(req, "withdrawn", Status.WITHDRAWN)

    async def refund(self, req: Req, tranche: Tranche, amount: int, reference: str, separate: bool, exact: bool) -> None:
        """Finance records money returned for a paid tranche (as the refunds route does)."""
        if exact:
            payment = await self._payment(req.id, tranche.number)
            back = await self._back(req.id, tranche.number)
            earlier = dict(self.refunds.get((req.id, tranche.number), []))

        async def record():
            async with self.db.transaction() as session:
                entry, new = await ledger.record_refund(
                    session, req.id, tranche.number, Money(minor_units=amount, currency=req.currency), reference,
                    FINANCE.subject, utcnow(), received_on=utcnow().date(), separate_from_reversal=separate,
                )  # fmt: skip
                if new:
                    await record_change(session, FINANCE, "refund_recorded", req.id, tranche=tranche.number,
                                        amount_minor=amount, reference=reference)  # fmt: skip
                return new

        try:
            outcome = "recorded" if await persist(record) else "again"
        except ledger.RefundRefused as refusal:
            outcome, why = "refused", str(refusal)
        DONE[f"refund:{outcome}"] += 1
        if outcome == "recorded":
            self.refunds.setdefault((req.id, tranche.number), []).append((reference, amount))
        if not exact:
            return
        if reference in earlier:
            expected = "again" if earlier[reference] == amount else "refused"
        elif payment.reversed_minor and not separate:
            expected = "refused"  # the reversal already counts that money
        elif back + amount > tranche.amount:
            expected = "refused"  # more would come back than was paid
        else:
            expected = "recorded"
        assert outcome == expected, (outcome, expected, amount, back, tranche.amount, payment.reversed_minor, outcome == "refused" and why)
        after = await self._back(req.id, tranche.number)
        assert after == back + (amount if outcome == "recorded" else 0), (after, back, amount, outcome)

    async def reverse(self, notice: TransferNotice, tranche: Tranche | None, req: Req | None, exact: bool) -> None:
        """Stripe's transfer.reversed event, as its workflow applies it (never raising)."""
        again = any(n.event_id == notice.event_id for n in self.notices)
        if exact and req is not None and tranche.state == "paid":
            payment = await self._payment(req.id, tranche.number)
            back = await self._back(req.id, tranche.number)
        applied = await persist(lambda: self.stripe.apply_transfer_notice(notice))
        assert applied is not again, "a delivery applied twice, or a first one not applied"
        DONE["reversal:" + ("again" if again else "stranger" if req is None else tranche.state)] += 1
        if not again:
            self.notices.append(notice)
        self.stripe_seen[notice.transfer_id] = max(self.stripe_seen.get(notice.transfer_id, 0), notice.amount_reversed_minor)
        if tranche is not None:
            tranche.reversal_seen = True
        if exact and req is not None and tranche.state == "paid":
            after = await self._back(req.id, tranche.number)
            if again or notice.amount_reversed_minor <= payment.reversed_minor:
                assert after == back, (after, back, notice)  # said nothing new
            else:  # what came back is now Stripe's figure (up to the payment) or more
                assert after == max(back, min(notice.amount_reversed_minor, tranche.amount)), (after, back, notice)
        # What cannot be applied (more than was paid; a transfer haven did not make) is a finding
        # finance reads, never an error to retry.
        unappliable = req is None or (tranche.state == "paid" and notice.amount_reversed_minor > tranche.amount)
        if exact and not again and unappliable:
            async with self.db.sessions() as session:
                kinds = set(await session.scalars(select(ReconciliationFinding.kind).where(ReconciliationFinding.transfer_id == notice.transfer_id)))
            assert FindingKind.MONEY_BACK_NOT_APPLIED in kinds, (notice, kinds)

    async def set_allocation(self, category: str, amount: int, exact: bool) -> None:
        if exact:
            before = await self._allocation(category)
            committed = before.reserved_base_minor + before.paid_base_minor

        async def change():
            async with self.db.transaction() as session:
                await ledger.set_allocation(session, category, START, END, Money(minor_units=amount, currency="EUR"), FINANCE.subject)

        try:
            await persist(change)
            refused = False
        except ledger.AllocationRefused:
            refused = True
        DONE["allocation:" + ("refused" if refused else "set")] += 1
        if exact:
            assert refused == (amount < committed), (amount, committed, refused)
            assert (await self._allocation(category)).amount_base_minor == (before.amount_base_minor if refused else amount)

    # --- drawing steps --------------------------------------------------------------------------
    #
    # Steps at once make the state depend on which of them won a race. Hypothesis needs each rule
    # to draw the same kinds of values (with the same bounds) whatever the state, so every rule
    # has no precondition and draws a fixed set of values, applied to the state as it is: an index
    # picks among the requests a step can be taken on (none: the step does nothing).

    # Candidates are listed the most recently touched first: Hypothesis draws (and shrinks to) small
    # indexes most, so steps tend to follow one another on the same request and tranche.

    def _touch(self, *things) -> None:
        tick = next(self.ticks)
        for thing in things:
            thing.touched = tick

    def _pick(self, data, predicate, busy: set[int] = frozenset(), label: str = "request") -> Req | None:
        i = data.draw(st.integers(0, 63), label=label)
        candidates = sorted((r for r in self.requests if predicate(r) and r.n not in busy), key=lambda r: -r.touched)
        if not candidates:
            return None
        self._touch(chosen := candidates[i % len(candidates)])
        return chosen

    def _tranches(self, predicate) -> list[tuple[Req, Tranche]]:
        return sorted(((r, t) for r in self.requests for t in r.tranches if predicate(r, t)), key=lambda rt: -rt[1].touched)

    def _reversal_targets(self) -> list[tuple[Req, Tranche]]:
        return self._tranches(lambda r, t: r.rail == PaymentRail.STRIPE and (t.state == "paid" or (t.state == "pending" and t.transfer)))

    def _plan(self, kind: str, data, busy: set[int], exact: bool):
        """A step of this kind with its arguments drawn, or None when there is nothing to do it to.
        Steps of a request's own workflow go to requests no other step in `busy` is on (a workflow
        does one thing at a time); refunds, reversals, allocations and submissions go anywhere."""
        if kind == "withdraw" and sum(r.active for r in self.requests) < 3:
            kind = "withdraw_nothing"  # not so often that nothing goes far
        if kind == "submit":
            category = data.draw(st.sampled_from(CATEGORIES), label="category")
            args = (
                data.draw(st.sampled_from(DEFENDERS[:1] + DEFENDERS), label="defender"),
                data.draw(st.lists(st.sampled_from(sorted(SPELLINGS)), max_size=3), label="spelling"),
                category,
                data.draw(st.sampled_from(["EUR", "EUR", "USD"]), label="currency"),
                data.draw(st.sampled_from([500_000, 300_000, 750_000, 600_000, 150_000])
                          | st.integers(1_000, self.fund.categories[category].max_grant), label="amount"),  # fmt: skip
                data.draw(st.integers(1, 3), label="tranches") if category == "safe_housing" else 1,
                data.draw(st.sampled_from([PaymentRail.STRIPE, PaymentRail.MANUAL]), label="rail"),
                data.draw(st.sampled_from([False, False, False, True]), label="submitted over 12 months ago") and exact,
            )
            if sum(r.active for r in self.requests) >= MOST_ACTIVE:
                return None
            return lambda: self.submit(*args)
        if kind in WHO:
            req = self._pick(data, WHO[kind], busy)
            share = data.draw(st.sampled_from(["asked", "half", "room"]), label="approve") if kind == "approve" else None
            confirm = data.draw(st.sampled_from([True, True, False]), label="confirmed now") if kind == "pay" else None
            if req is None:
                return None
            busy.add(req.n)
            note(f"{kind} {req.id} ({req.status}, {req.defender}, {req.category})")
            return {
                "approve": lambda: self.approve(req, share),
                "reserve": lambda: self.reserve(req, exact),
                "reserve_twice": lambda: self.reserve(req, exact, twice=True),
                "pay": lambda: self.pay(req, confirm, exact),
                "fail": lambda: self.fail(req),
                "withdraw": lambda: self.withdraw(req),
            }[kind]
        if kind == "advance":
            req = self._pick(data, lambda r: r.active, busy)
            confirm = data.draw(st.sampled_from([True, True, True, False]), label="confirmed now")
            if req is None:
                return None
            busy.add(req.n)
            note(f"advance {req.id} ({req.status}, {req.defender}, {req.category})")
            DONE[f"advance:{req.status}"] += 1
            if req.status == "awaiting" and WHO["approve"](req):
                return lambda: self.approve(req, "asked")
            if WHO["reserve"](req):
                return lambda: self.reserve(req, exact)
            if WHO["pay"](req):
                return lambda: self.pay(req, confirm, exact)
            return None
        if kind == "refund":
            i = data.draw(st.integers(0, 63), label="tranche")
            how = data.draw(st.sampled_from(["part", "the rest", "one more than the rest", "more than paid"]), label="refund")
            v = data.draw(st.integers(0, 10**6), label="amount")
            reuse = data.draw(st.booleans(), label="reference used before")
            j = data.draw(st.integers(0, 63), label="earlier refund")
            same = data.draw(st.booleans(), label="its amount")
            separate = data.draw(st.sampled_from([False, False, True]), label="separate_from_reversal")
            paid = self._tranches(lambda r, t: t.state == "paid")
            if not paid:
                return None
            req, tranche = paid[i % len(paid)]
            self._touch(req, tranche)
            earlier = self.refunds.get((req.id, tranche.number), [])
            back = sum(a for _, a in earlier)
            amount = {"part": 1 + v % tranche.amount, "the rest": max(1, tranche.amount - back),
                      "one more than the rest": tranche.amount - back + 1, "more than paid": tranche.amount + v % tranche.amount}[how]  # fmt: skip
            reference = f"SEPA-IN-{next(self.keys)}"
            if earlier and reuse:
                reference, used = earlier[j % len(earlier)]
                amount = used if same else amount
            note(f"refund {amount} of {req.id} tranche {tranche.number} ({tranche.amount} paid), {reference}, separate={separate}")
            return lambda: self.refund(req, tranche, amount, reference, separate, exact)
        if kind == "reverse":
            return self._plan_reversal(data, exact)
        if kind in ("refund_and_reversal", "refund_and_reversal_at_once"):
            # The report's case: finance records a refund of a Stripe-paid tranche and Stripe reverses
            # its transfer, in either order, or at once.
            i = data.draw(st.integers(0, 63), label="tranche")
            first = data.draw(st.sampled_from(["refund first", "reversal first"]), label="order")
            how = data.draw(st.sampled_from(["part", "the rest", "one more than the rest", "more than paid"]), label="refund")
            v = data.draw(st.integers(0, 10**6), label="amount")
            separate = data.draw(st.sampled_from([False, False, True]), label="separate_from_reversal")
            how_reversed = data.draw(st.sampled_from(["all", "half", "as before", "more than paid", "part", "an older figure"]), label="reversed")
            w = data.draw(st.integers(0, 10**6), label="amount")
            paid = self._tranches(lambda r, t: r.rail == PaymentRail.STRIPE and t.state == "paid")
            if not paid:
                return None
            req, tranche = paid[i % len(paid)]
            self._touch(req, tranche)
            back = sum(a for _, a in self.refunds.get((req.id, tranche.number), []))
            amount = {"part": 1 + v % tranche.amount, "the rest": max(1, tranche.amount - back),
                      "one more than the rest": tranche.amount - back + 1, "more than paid": tranche.amount + v % tranche.amount}[how]  # fmt: skip
            reference = f"SEPA-IN-{next(self.keys)}"
            notice = self._reversal(req, tranche, how_reversed, w)
            note(f"refund {amount} and {notice.event_id} ({notice.amount_reversed_minor} reversed in all) of {req.id} tranche "
                 f"{tranche.number} ({tranche.amount} paid), {first if kind == 'refund_and_reversal' else 'at once'}")  # fmt: skip
            refund = lambda: self.refund(req, tranche, amount, reference, separate, exact)  # noqa: E731
            reverse = lambda: self.reverse(notice, tranche, req, exact)  # noqa: E731

            async def both():
                DONE[kind] += 1
                if kind == "refund_and_reversal_at_once":
                    await asyncio.gather(refund(), reverse())
                else:
                    for step in (refund, reverse) if first == "refund first" else (reverse, refund):
                        await step()

            return both
        if kind == "allocate":
            category = data.draw(st.sampled_from(CATEGORIES), label="category")
            how = data.draw(st.sampled_from(["+1M", "5M", "+1M", "5M", "+100k", "committed", "committed - 1", "0"]), label="allocation")
            allocation = self.run(self._allocation(category))
            committed = allocation.reserved_base_minor + allocation.paid_base_minor
            amount = {"+1M": committed + 1_000_000, "5M": 5_000_000, "+100k": committed + 100_000, "committed": committed,
                      "committed - 1": max(committed - 1, 0), "0": 0}[how]  # fmt: skip
            note(f"allocate {amount} to {category} ({committed} committed)")
            return lambda: self.set_allocation(category, amount, exact)
        if kind == "withdraw_nothing":
            self._pick(data, WHO["withdraw"], busy)  # the same draws as a withdrawal
            return None
        raise AssertionError(kind)

    def _plan_reversal(self, data, exact: bool):
        # Mostly a tranche's transfer; sometimes an event delivered again, or a transfer haven never made.
        which = data.draw(st.sampled_from(["tranche"] * 6 + ["again", "again", "stranger"]), label="reversal of")
        i = data.draw(st.integers(0, 63), label="which")
        how = data.draw(st.sampled_from(["all", "half", "as before", "more than paid", "part", "an older figure"]), label="reversed")
        v = data.draw(st.integers(0, 10**6), label="amount")
        targets = self._reversal_targets()
        if self.notices and which == "again":
            notice = self.notices[i % len(self.notices)]
            req, tranche = next(((r, t) for r in self.requests for t in r.tranches if t.transfer == notice.transfer_id), (None, None))
            note(f"deliver {notice.event_id} again")
            return lambda: self.reverse(notice, tranche, req, exact)
        if which == "stranger" or (not targets and which == "again"):
            notice = TransferNotice(
                event_id=f"evt_{next(self.events)}", event_type=TRANSFER_REVERSED, created=utcnow(),
                transfer_id=f"tr_stranger{next(self.keys)}", amount=Money(minor_units=50_000, currency="EUR"),
                amount_reversed_minor=1 + v % 50_000,
            )  # fmt: skip
            return lambda: self.reverse(notice, None, None, exact)
        if not targets:
            return None
        req, tranche = targets[i % len(targets)]
        self._touch(req, tranche)
        notice = self._reversal(req, tranche, how, v)
        note(f"{notice.event_id}: {tranche.transfer} ({tranche.state}, {tranche.amount}) reversed {notice.amount_reversed_minor} in all")
        return lambda: self.reverse(notice, tranche, req, exact)

    def _reversal(self, req: Req, tranche: Tranche, how: str, v: int) -> TransferNotice:
        """A new transfer.reversed event for the tranche's transfer; its amount is cumulative."""
        seen = self.stripe_seen.get(tranche.transfer, 0)
        reversed_total = {"all": tranche.amount, "half": max(tranche.amount // 2, 1), "as before": max(seen, 1),
                          "more than paid": tranche.amount + 100, "part": 1 + v % tranche.amount,
                          "an older figure": 1 + v % max(seen, 1)}[how]  # fmt: skip
        return TransferNotice(
            event_id=f"evt_{next(self.events)}", event_type=TRANSFER_REVERSED, created=utcnow(), transfer_id=tranche.transfer,
            request_id=req.id, tranche=tranche.number, amount=Money(minor_units=tranche.amount, currency=req.currency),
            amount_reversed_minor=reversed_total,
        )  # fmt: skip

    def _step(self, kind: str, data) -> None:
        DONE[f"step:{kind}"] += 1
        plan = self._plan(kind, data, set(), exact=True)
        if plan is not None:
            self.run(plan())

    # --- rules ----------------------------------------------------------------------------------

    @initialize(budgets=st.tuples(*[st.sampled_from([3_000_000, 1_500_000, 10**7, 800_000]) for _ in CATEGORIES]))
    def budgets(self, budgets):
        for category, amount in zip(CATEGORIES, budgets):
            self.run(self.set_allocation(category, amount, exact=True))

    @initialize(data=st.data())
    def first_requests(self, data):
        """Three requests, the first taken as far as paid (when it fits), so that money can come
        back from the first steps on."""
        for _ in range(3):
            self._step("submit", data)
        if self.requests:
            first = self.requests[0]
            self.run(self.approve(first, "asked"))
            self.run(self.reserve(first, exact=True))
            while first.held and first.next_tranche() is not None:
                self.run(self.pay(first, True, exact=True))

    @rule(data=st.data())
    def step(self, data):
        """One step, its outcome checked against the rules. (One rule drawing the kind of step,
        weighted, rather than a rule per kind: Hypothesis enables a random subset of a machine's
        rules in each example, which left most examples without the steps that take a request
        far enough to be paid and refunded.)"""
        self._step(data.draw(st.sampled_from(STEPS), label="step"), data)

    @rule(data=st.data())
    def at_once(self, data):
        """2 to 4 steps at once, each in its own transaction; sometimes one activity twice."""
        kinds = [data.draw(st.sampled_from(AT_ONCE), label="at once") for _ in range(data.draw(st.integers(2, 4), label="how many"))]
        busy: set[int] = set()
        plans = [plan for kind in kinds if (plan := self._plan(kind, data, busy, exact=False)) is not None]
        DONE[f"at_once:{len(plans)}"] += 1

        async def together():
            await asyncio.gather(*(plan() for plan in plans))

        self.run(together())

    # --- what must hold after every step ---------------------------------------------------------

    @invariant()
    def money_rules_hold(self):
        DONE["checks"] += 1
        self.run(self._check())

    async def _check(self) -> None:
        async with self.db.sessions() as session:
            assert await ledger.discrepancies(session) == []
            entries = (await session.execute(select(LedgerEntry))).scalars().all()
            allocations = (await session.scalars(select(BudgetAllocation))).all()
            payments = (await session.scalars(select(Payment))).all()
            requests = {r.id: r for r in (await session.scalars(select(GrantRequestRecord))).all()}
            held = set(await session.scalars(select(BudgetReservation.request_id).where(BudgetReservation.status == "held")))

        # Every allocation adds up, counted here from its entries; no bucket below zero.
        sums: dict[tuple[str, str], int] = Counter()
        for e in entries:
            sums[e.allocation_id, e.kind] += e.amount_base_minor
        for a in allocations:
            s = lambda kind: sums[a.id, kind]  # noqa: E731
            allocated = s(ledger.ALLOCATION)
            reserved = s(ledger.RESERVATION) - s(ledger.RELEASE) - s(ledger.PAYMENT)
            net_paid = s(ledger.PAYMENT) - s(ledger.REFUND) - s(ledger.REVERSAL)
            available = a.amount_base_minor - a.reserved_base_minor - a.paid_base_minor
            assert (a.amount_base_minor, a.reserved_base_minor, a.paid_base_minor) == (allocated, reserved, net_paid), a.id
            assert allocated == available + reserved + net_paid
            assert min(available, reserved, net_paid) >= 0, (a.id, available, reserved, net_paid)

        # Per tranche: money back never exceeds what was paid; a reversal Stripe reported is not lost.
        back: dict[tuple[str, int], list[int]] = {}
        paid_entries = {(e.request_id, e.tranche) for e in entries if e.kind == ledger.PAYMENT}
        for e in entries:
            if e.kind in (ledger.REFUND, ledger.REVERSAL):
                totals = back.setdefault((e.request_id, e.tranche), [0, 0])
                totals[0] += e.amount_minor
                totals[1] += e.amount_base_minor
                assert e.amount_minor >= 0 and e.amount_base_minor >= 0, e.entry_key
        by_tranche = {(p.request_id, p.tranche): p for p in payments}
        for key, (minor, base) in back.items():
            payment = by_tranche.get(key)
            assert payment is not None and payment.status == "paid" and key in paid_entries, f"money back for {key}, never paid"
            assert minor <= payment.amount_minor and base <= payment.amount_base_minor, (key, minor, base, payment.amount_minor)
        for p in payments:
            if p.status == "paid" and p.rail == PaymentRail.STRIPE and (p.request_id, p.tranche) in paid_entries:
                reported = self.stripe_seen.get(p.reference, 0)
                came_back = back.get((p.request_id, p.tranche), [0, 0])[0]
                assert came_back >= min(reported, p.amount_minor), f"a reversal of {reported} of {p.reference} was lost ({came_back} back)"

        # Per defender, however written: within the 12-month cap; per grant: within its category's.
        sign = {ledger.RESERVATION: 1, ledger.RELEASE: -1, ledger.REFUND: -1, ledger.REVERSAL: -1}
        since = utcnow() - timedelta(days=365)
        per_defender: Counter[str] = Counter()
        per_request: Counter[str] = Counter()
        for e in entries:
            if e.request_id is not None and e.kind in sign:
                per_request[e.request_id] += sign[e.kind] * e.amount_base_minor
                if requests[e.request_id].created_at >= since:
                    per_defender[requests[e.request_id].defender_ref] += sign[e.kind] * e.amount_base_minor
        for req in self.requests:
            assert requests[req.id].defender_ref == defender_ref(req.defender, INDEX_KEY)
        cap = self.fund.per_defender_cap_12_months
        for ref, total in per_defender.items():
            assert 0 <= total <= cap, f"a defender has {total} committed in 12 months; the cap is {cap}"
        for request_id, total in per_request.items():
            assert 0 <= total <= self.fund.categories[requests[request_id].category].max_grant, (request_id, total)

        # Per request (as tests/ledger_checks.py): nothing left reserved without a reservation held,
        # and the ledger's payments are the tranches paid.
        moved: dict[str, Counter[str]] = {}
        for e in entries:
            if e.request_id is not None:
                moved.setdefault(e.request_id, Counter())[e.kind] += e.amount_base_minor
        paid_base = Counter()
        for p in payments:
            if p.status == "paid":
                paid_base[p.request_id] += p.amount_base_minor
        for request_id, kinds in moved.items():
            reserved = kinds[ledger.RESERVATION] - kinds[ledger.RELEASE] - kinds[ledger.PAYMENT]
            assert reserved >= 0 and (reserved == 0 or request_id in held), (request_id, reserved)
            assert kinds[ledger.PAYMENT] == paid_base[request_id], (request_id, kinds[ledger.PAYMENT], paid_base[request_id])

        report = await verify_chain(self.db)
        assert report.intact, report.describe()


class _NoTemporal:
    """Intake starts each request's workflow; here nothing runs one (the sweep would later)."""

    async def start_workflow(self, *args, **kwargs):
        raise ConnectionError("no Temporal in the property test")


# --- the test, on both databases ---------------------------------------------------------------------


def _examples() -> tuple[int, bool]:
    """How many examples, and whether derandomized: a fixed set inside `make test`, more (and new
    ones each time) by hand."""
    by_hand = os.environ.get("HAVEN_PROPERTY_EXAMPLES")
    return (int(by_hand), False) if by_hand else (25, True)


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request, tmp_path):
    """Makes a fresh database at the newest schema for each example (a copy of the migrated
    template); returns (url, drop)."""
    counter = itertools.count()
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")

        def make():
            path = tmp_path / f"example-{next(counter)}.db"
            shutil.copyfile(template, path)
            return f"sqlite+aiosqlite:///{path}", lambda: [p.unlink(missing_ok=True) for p in tmp_path.glob(f"{path.name}*")]

        return make
    server = request.getfixturevalue("postgres_server_url")
    template = request.getfixturevalue("postgres_template")

    def make():
        name = f"haven_prop_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

        def drop():
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return _postgres_url(server, name), drop

    return make


def test_the_money_rules_hold_under_random_interleavings(new_database, default_policy):
    examples, derandomize = _examples()
    steps = int(os.environ.get("HAVEN_PROPERTY_STEPS", "30"))
    MoneyMachine.new_database = staticmethod(new_database)
    MoneyMachine.policy = default_policy
    RETRIED.clear()
    DONE.clear()
    started = time.monotonic()
    run_state_machine_as_test(
        MoneyMachine,
        settings=settings(
            max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=derandomize, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], print_blob=True,
        ),  # fmt: skip
    )
    print(f"{examples} examples of up to {steps} steps in {time.monotonic() - started:.1f} s; retried: {dict(RETRIED)}; {dict(sorted(DONE.items()))}")

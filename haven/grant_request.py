"""The grant request as the API, the workflow and the activities all see it: one model per concept."""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Callable, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints, model_validator

from haven.lifecycle import Action, Status
from haven.money import Money, PositiveMoney, WholeNumber


class Category(StrEnum):
    LEGAL_FEES = "legal_fees"
    SECURE_COMMUNICATIONS = "secure_communications"
    SAFE_HOUSING = "safe_housing"


class Urgency(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"


class ThreatLevel(StrEnum):
    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"
    SEVERE = "severe"


class RiskTier(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class TrustLevel(StrEnum):
    LOW = "low"
    STANDARD = "standard"
    HIGH = "high"


class PaymentRail(StrEnum):
    MANUAL = "manual"  # finance pays by bank transfer and records it
    STRIPE = "stripe"  # a Stripe Connect transfer to the payee's connected account


class Role(StrEnum):
    INTERMEDIARY = "intermediary"
    CASEWORKER = "caseworker"
    DIRECTOR = "director"
    FINANCE = "finance"
    ADMIN = "admin"


def _tidy_text(value: str) -> str:
    # Text in any script is welcome; control characters (NUL above all, which PostgreSQL cannot
    # store) never belong in a case and are refused rather than silently stripped. The length is
    # checked on what was sent (as the API's schema says); surrounding blanks are then dropped.
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in value):
        raise ValueError("must not contain control characters")
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


# The same rule as _tidy_text, stated in the API's schema (ECMA-262, as JSON Schema reads it):
# no control character but tab, line feed and carriage return, and at least one character that
# str.strip() keeps. Stated, not enforced by pydantic, whose message would quote the pattern;
# _tidy_text enforces it and says what is wrong.
_STRIPPED = r"\t\n\r \xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"  # str.isspace() but controls
TEXT_PATTERN = (
    rf"^[{_STRIPPED}]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]"
    r"[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
)


class _Stated:
    """Adds keywords to a type's JSON Schema that its validators enforce in their own words."""

    def __init__(self, **keywords: Any):
        self.keywords = keywords

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {**handler(core_schema), **self.keywords}


def _text(max_length: int) -> Any:
    return Annotated[
        str, StringConstraints(min_length=1, max_length=max_length), AfterValidator(_tidy_text), _Stated(pattern=TEXT_PATTERN)
    ]


def _calendar_date(value: Any) -> Any:
    # Pydantic would also read a number as a Unix timestamp; a day in this API is written as one.
    if isinstance(value, date) or (isinstance(value, str) and _ISO_DATE.fullmatch(value)):
        return value
    raise ValueError("must be a date written YYYY-MM-DD")


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
CalendarDate = Annotated[date, BeforeValidator(_calendar_date)]

ShortText = _text(200)
LongText = _text(4000)
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Reference = _text(100)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Actor(Strict):
    """Who did something: the token's subject, roles and organisation, or the system itself.

    `person` is who they are, for every rule that compares people (four eyes, conflicts, the
    director's approval): the identity provider's issuer and the subject's canonical name
    (haven.identifiers), taken from the roster for staff. Two actors are the same person exactly
    when their `person` is equal; actors from before it existed (None) compare by subject."""

    subject: str
    roles: list[Role] = Field(default_factory=list)
    organisation: str | None = None
    issuer: str | None = None
    person: str | None = None

    def has(self, role: Role) -> bool:
        return role in self.roles


SYSTEM = Actor(subject="system")


# --- intake -----------------------------------------------------------------------------------


class Defender(Strict):
    """As little as possible: the intermediary's pseudonym for the defender, never a name."""

    pseudonym: ShortText = Field(description="The intermediary's stable code name for the defender.")


class Payee(Strict):
    # _rail_has_what_it_needs, stated in the schema.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"rail": {"const": "stripe"}}, "required": ["rail"]},
            "then": {"properties": {"stripe_account": {"type": "string"}}, "required": ["stripe_account"]},
        }
    )

    name: ShortText = Field(description="Law firm, vendor, landlord or the intermediary itself.")
    country: CountryCode
    rail: PaymentRail = PaymentRail.MANUAL
    account: Reference | None = Field(default=None, description="IBAN or account reference for a bank transfer.")
    stripe_account: Annotated[str, StringConstraints(pattern=r"^acct_[A-Za-z0-9]{1,64}$")] | None = Field(
        default=None, description="The payee's Stripe connected account (onboarded outside haven); for rail `stripe`."
    )

    @model_validator(mode="after")
    def _rail_has_what_it_needs(self) -> "Payee":
        if self.rail == PaymentRail.STRIPE and not self.stripe_account:
            raise ValueError("rail stripe needs the payee's stripe_account (acct_…)")
        return self


class GrantRequestSubmission(Strict):
    """What an intermediary submits. Sensitive fields are kept apart from the workflow."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "category": "legal_fees",
                    "urgency": "high",
                    "country": "KE",
                    "amount": {"minor_units": 150000, "currency": "EUR"},
                    "tranches": 1,
                    "threat_level": "moderate",
                    "threat_summary": "Summoned for questioning after publishing a report on land evictions.",
                    "purpose": "Retainer for a defence lawyer for the first hearing.",
                    "defender": {"pseudonym": "falcon-17"},
                    "payee": {"name": "Example Advocates LLP", "country": "KE", "account": "KE00 1234 5678"},
                }
            ]
        }
    )

    category: Category
    urgency: Urgency
    country: CountryCode = Field(description="ISO 3166-1 alpha-2 code of where the defender is.")
    amount: PositiveMoney = Field(description="The total requested; safe housing is split evenly over its tranches.")
    tranches: WholeNumber = Field(default=1, ge=1, le=24)
    threat_level: ThreatLevel
    threat_summary: LongText
    purpose: LongText
    defender: Defender
    payee: Payee

    def sensitive_details(self) -> dict[str, Any]:
        """The part that identifies or endangers people: stored apart, never sent to Temporal."""
        return {
            "defender": self.defender.model_dump(mode="json"),
            "payee": self.payee.model_dump(mode="json"),
            "threat_summary": self.threat_summary,
            "purpose": self.purpose,
        }


# --- the workflow's input -------------------------------------------------------------------


class GrantRequestStart(Strict):
    """The workflow's input: no personal data, and the policy pinned at intake."""

    request_id: str
    organisation_id: str
    submitted_by: str
    submitted_by_person: str | None = None  # Actor.person of the submitter (None: started before it existed)
    category: Category
    urgency: Urgency
    country: CountryCode
    threat_level: ThreatLevel
    amount: Money
    tranches: int
    rail: PaymentRail
    policy_hash: str
    received_at: datetime


# --- commands: what people do to a request (Workflow Updates) -----------------------------------
# Each `...Input` is what a person sends to the API; its command adds who they are (from the token).


# What a person wrote, as a command carries it: sealed by the API with the request's data key (see
# haven.case_keys.CASE_TEXT), so longer than the text it seals. The text itself was checked by the
# command's input model.
CaseText = Annotated[str, StringConstraints(min_length=1)]


class Acting(Strict):
    actor: Actor
    case_text: ClassVar[tuple[str, ...]] = ()  # the fields a person wrote, sealed before the workflow sees them

    def sealed(self, seal: Callable[[str], str]) -> Self:
        changes: dict[str, Any] = {}
        for name in self.case_text:
            value = getattr(self, name)
            if isinstance(value, list):
                changes[name] = [seal(item) for item in value]
            elif value is not None:
                changes[name] = seal(value)
        return self.model_copy(update=changes)


class DecisionInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "approve", "amount": {"minor_units": 120000, "currency": "EUR"}},
                {"kind": "request_information", "note": "Please send the lawyer's fee quote."},
                {"kind": "reject", "note": "Outside the fund's mandate: commercial dispute."},
            ]
        }
    )

    kind: Literal["approve", "reject", "request_information"]
    amount: Money | None = Field(default=None, description="Required to approve; may be lower than requested.")
    note: _text(4000) | None = Field(default=None, description="Required to reject or to ask for information.")


class DecisionCommand(DecisionInput, Acting):
    case_text = ("note",)
    note: CaseText | None = None

    @property
    def action(self) -> Action:
        return Action(self.kind)


class ScreeningClearanceInput(Strict):
    note: LongText


class ScreeningClearance(ScreeningClearanceInput, Acting):
    case_text = ("note",)
    note: CaseText


class InformationInput(Strict):
    answer: LongText


class InformationResponse(InformationInput, Acting):
    case_text = ("answer",)
    answer: CaseText


class ManualPaymentInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"amount": {"minor_units": 120000, "currency": "EUR"}, "reference": "SEPA-2026-0042", "paid_on": "2026-11-24"}]
        }
    )

    amount: Money
    reference: Reference = Field(description="The bank transfer's reference.")
    paid_on: CalendarDate


class ManualPaymentRecord(ManualPaymentInput, Acting):
    pass


class PaymentFailureInput(Strict):
    reason: LongText


class PaymentFailureRecord(PaymentFailureInput, Acting):
    case_text = ("reason",)
    reason: CaseText


class PaymentRetryInput(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"rail": "manual"}]})

    rail: PaymentRail | None = Field(
        default=None,
        description="Pay through this rail from now on (e.g. `manual` after Stripe refused); omitted: the same rail.",
    )


class PaymentRetry(PaymentRetryInput, Acting):
    pass


class CheckInInput(Strict):
    still_needed: StrictBool
    note: LongText | None = None


class CheckInRecord(CheckInInput, Acting):
    case_text = ("note",)
    note: CaseText | None = None


class ReportInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Lawyer retained; the hearing was postponed.", "receipts": ["INV-2026-17"]}]}
    )

    text: LongText
    receipts: list[Reference] = Field(default_factory=list, max_length=50)


class FollowUpReport(ReportInput, Acting):
    case_text = ("text", "receipts")
    text: CaseText
    receipts: list[CaseText] = Field(default_factory=list)


class ReportAcceptanceInput(Strict):
    note: LongText | None = None


class ReportAcceptance(ReportAcceptanceInput, Acting):
    case_text = ("note",)
    note: CaseText | None = None


class WithdrawalInput(Strict):
    reason: LongText


class Withdrawal(WithdrawalInput, Acting):
    case_text = ("reason",)
    reason: CaseText


class ActionResult(Strict):
    request_id: str
    status: Status
    message: str


# --- what the workflow knows and answers by query -----------------------------------------------


class ScreeningResult(Strict):
    hit: bool
    matched_entries: list[str] = Field(default_factory=list)
    list_version: str


class RiskAssessment(Strict):
    score: int
    tier: RiskTier
    factors: dict[str, int]
    prior_grants_12_months: int
    prior_granted_base_12_months: int


class Approval(Strict):
    subject: str
    roles: list[Role]
    person: str | None = None  # Actor.person of who approved
    amount: Money
    at: datetime


class Tranche(Strict):
    number: int
    amount: Money
    status: Literal["scheduled", "payment_pending", "paid", "failed", "cancelled"] = "scheduled"
    paid_on: date | None = None
    reference: str | None = None
    reversed_minor: int = 0  # money that came back after payment (a Stripe transfer reversal)
    check_in_due_at: datetime | None = None


class TimelineEntry(Strict):
    seq: int
    at: datetime
    action: str
    actor: str
    status: Status
    facts: dict[str, Any] = Field(default_factory=dict)


class GrantRequestState(Strict):
    """The workflow's own view of the request, returned by the `state` query."""

    request_id: str
    status: Status
    policy_hash: str
    requested: Money
    rail: PaymentRail = PaymentRail.MANUAL
    granted: Money | None = None
    screening: ScreeningResult | None = None
    risk: RiskAssessment | None = None
    approvals: list[Approval] = Field(default_factory=list)
    approvals_required: int | None = None
    director_required: bool | None = None
    decision_due_at: datetime | None = None
    escalated: bool = False
    tranches: list[Tranche] = Field(default_factory=list)
    current_tranche: int | None = None
    report_due_at: datetime | None = None
    report_submitted: bool = False
    follow_up_overdue: bool = False
    timeline: list[TimelineEntry] = Field(default_factory=list)

"""A unique canary string in every sensitive field of a case, and the case taken to closed through
the API: tests then search everything haven wrote for the canaries."""

from __future__ import annotations

from datetime import date, timedelta

from tests.api_harness import BODY, Api

CANARIES = {
    "pseudonym": "canary-pseudonym-7f3a",
    "payee_name": "Canary Payee 5d1e Advocates",
    "account": "KE99 CANARY 4b2c",
    "threat_summary": "canary-threat-9a8b detained at the border",
    "purpose": "canary-purpose-2c4d lawyer retainer",
    "question": "canary-question-6e5f please send the quote",
    "answer": "canary-answer-1a2b the quote is attached",
    "approval_note": "canary-approval-3c4d",
    "report": "canary-report-8d9e the hearing took place",
    "receipt": "canary-receipt-0f1a",
    "acceptance": "canary-acceptance-7b6c",
}


async def case_through_to_closed(api: Api) -> str:
    """A case taken from submission to closed over the API, a canary in every sensitive field."""
    body = {
        **BODY,
        "threat_summary": CANARIES["threat_summary"], "purpose": CANARIES["purpose"],
        "defender": {"pseudonym": CANARIES["pseudonym"]},
        "payee": {"name": CANARIES["payee_name"], "country": "KE", "account": CANARIES["account"]},
    }  # fmt: skip
    created = await api.submit(body)
    assert created.status_code == 202, created.text
    request_id = created.json()["id"]
    url = f"/v1/grant-requests/{request_id}"
    cw, intermediary, finance = api.token("caseworker", "cw-1"), api.intermediary(), api.token("finance", "fin-1")

    async def step(path: str, body: dict, headers: dict, then: str) -> None:
        response = await api.http.post(url + path, json=body, headers=headers)
        assert response.status_code == 200, response.text
        await api.until_status(request_id, then)

    await api.until_status(request_id, "awaiting_decision")
    await step("/decisions", {"kind": "request_information", "note": CANARIES["question"]}, cw, "information_requested")
    await step("/information", {"answer": CANARIES["answer"]}, intermediary, "awaiting_decision")
    amount = {"minor_units": 150_000, "currency": "EUR"}
    await step("/decisions", {"kind": "approve", "amount": amount, "note": CANARIES["approval_note"]}, cw, "payment_pending")
    await step("/payments", {"amount": amount, "reference": "SEPA-2031-1", "paid_on": date.today().isoformat()}, finance, "follow_up")
    await step("/reports", {"text": CANARIES["report"], "receipts": [CANARIES["receipt"]]}, intermediary, "follow_up")
    await step("/report-acceptance", {"note": CANARIES["acceptance"]}, cw, "closed")
    return request_id


# --- every sensitive field of every kind of case ------------------------------------------------
# A case of each shape a defender's data can take: a lawyer paid after a failed transfer, safe
# housing in two tranches with a check-in, a payee held by screening then refused, a request
# withdrawn, and (where the local Stripe server runs) a payee paid through Stripe. Each field a
# person fills in holds its own canary.


def canaries_of(case: str) -> dict[str, str]:
    return {
        "pseudonym": f"canary-{case}-pseudonym-7f3a",
        "payee_name": f"Canary {case} Payee 5d1e Advocates",
        "account": f"KE99 CANARY {case} 4b2c",
        "stripe_account": f"acct_CANARY{case}stripe9c1d",
        "threat_summary": f"canary-{case}-threat-9a8b detained at the border",
        "purpose": f"canary-{case}-purpose-2c4d lawyer retainer",
        "question": f"canary-{case}-question-6e5f please send the quote",
        "answer": f"canary-{case}-answer-1a2b the quote is attached",
        "approval_note": f"canary-{case}-approval-3c4d",
        "failure_reason": f"canary-{case}-failure-5e6f the bank returned it",
        "check_in_note": f"canary-{case}-check-in-8a9b still at the safe house",
        "clearance_note": f"canary-{case}-clearance-2d3e another Northwind",
        "rejection_note": f"canary-{case}-rejection-4f5a outside the mandate",
        "withdrawal_reason": f"canary-{case}-withdrawal-6b7c found another fund",
        "report": f"canary-{case}-report-8d9e the hearing took place",
        "receipt": f"canary-{case}-receipt-0f1a",
        "acceptance": f"canary-{case}-acceptance-7b6c",
    }


class Life:
    """Takes cases through the API of a running haven: the in-process app (`Api`) or `haven run`."""

    def __init__(self, http, token, until_status, sleep=None):
        self.http, self.token, self.until_status, self.sleep = http, token, until_status, sleep
        self.planted: set[str] = set()  # every canary sent, in any field
        self.written: set[str] = set()  # those written into a case after its submission
        self.submitted: list[str] = []
        self._keys = 0

    def _plant(self, value, into: set[str]) -> None:
        if isinstance(value, dict):
            for item in value.values():
                self._plant(item, into)
        elif isinstance(value, list):
            for item in value:
                self._plant(item, into)
        elif isinstance(value, str) and "canary" in value.lower():
            into.add(value)
            self.planted.add(value)

    async def submit(self, case: str, *, payee: dict | None = None, **fields) -> tuple[str, dict[str, str]]:
        canary = canaries_of(case)
        body = {
            **BODY, "threat_summary": canary["threat_summary"], "purpose": canary["purpose"],
            "defender": {"pseudonym": canary["pseudonym"]},
            "payee": payee or {"name": canary["payee_name"], "country": "KE", "account": canary["account"],
                               "stripe_account": canary["stripe_account"]},
            **fields,
        }  # fmt: skip
        self._keys += 1
        headers = {**self.token("intermediary", "int-1", "ngo-1"), "Idempotency-Key": f"life-{case}-{self._keys}"}
        created = await self.http.post("/v1/grant-requests", json=body, headers=headers)
        assert created.status_code == 202, created.text
        self._plant(body, self.planted)
        self.submitted.append(created.json()["id"])
        return created.json()["id"], canary

    async def act(self, request_id: str, path: str, body: dict, who: tuple[str, ...], then: str | None = None) -> dict:
        response = await self.http.post(f"/v1/grant-requests/{request_id}{path}", json=body, headers=self.token(*who))
        assert response.status_code == 200, response.text
        self._plant(body, self.written)
        if then is not None:
            await self.until_status(request_id, then)
        return response.json()

    async def approve(self, request_id: str, amount: dict, note: str | None = None) -> None:
        """Approves with as many people as the request's risk asks for."""
        for who in (("caseworker", "cw-1"), ("caseworker", "cw-2"), ("director", "dir-1")):
            body = {"kind": "approve", "amount": amount, **({"note": note} if note and who[1] == "cw-1" else {})}
            if (await self.act(request_id, "/decisions", body, who))["status"] != "awaiting_decision":
                return
        raise AssertionError(f"{request_id} still awaits a decision after three approvals")

    async def report_and_close(self, request_id: str, canary: dict[str, str]) -> None:
        intermediary, cw = ("intermediary", "int-1", "ngo-1"), ("caseworker", "cw-1")
        await self.act(request_id, "/reports", {"text": canary["report"], "receipts": [canary["receipt"]]}, intermediary)
        await self.act(request_id, "/report-acceptance", {"note": canary["acceptance"]}, cw, "closed")

    async def lawyer_paid_after_a_failed_transfer(self) -> str:
        request_id, canary = await self.submit("lawyer")
        cw, intermediary, finance = ("caseworker", "cw-1"), ("intermediary", "int-1", "ngo-1"), ("finance", "fin-1")
        await self.until_status(request_id, "awaiting_decision")
        await self.act(request_id, "/decisions", {"kind": "request_information", "note": canary["question"]}, cw, "information_requested")
        await self.act(request_id, "/information", {"answer": canary["answer"]}, intermediary, "awaiting_decision")
        amount = {"minor_units": 150_000, "currency": "EUR"}
        await self.approve(request_id, amount, canary["approval_note"])
        await self.until_status(request_id, "payment_pending")
        await self.act(request_id, "/payment-failures", {"reason": canary["failure_reason"]}, finance, "payment_failed")
        await self.act(request_id, "/payment-retries", {}, finance, "payment_pending")
        paid = {"amount": amount, "reference": "SEPA-2031-1", "paid_on": date.today().isoformat()}
        await self.act(request_id, "/payments", paid, finance, "follow_up")
        await self.report_and_close(request_id, canary)
        return request_id

    async def housing_in_two_tranches(self) -> str:
        """Needs `sleep` (skipped time): the check-in comes a month after the first rent."""
        request_id, canary = await self.submit(
            "housing", category="safe_housing", tranches=2, amount={"minor_units": 200_000, "currency": "EUR"}
        )
        finance, intermediary = ("finance", "fin-1"), ("intermediary", "int-1", "ngo-1")
        await self.until_status(request_id, "awaiting_decision")
        await self.approve(request_id, {"minor_units": 200_000, "currency": "EUR"})
        for number in (1, 2):
            if number == 2:
                await self.sleep(timedelta(days=31))
                await self.act(request_id, "/check-ins", {"still_needed": True, "note": canary["check_in_note"]}, intermediary)
            await self.until_status(request_id, "payment_pending")
            rent = {"amount": {"minor_units": 100_000, "currency": "EUR"}, "reference": f"RENT-{number}", "paid_on": date.today().isoformat()}
            await self.act(request_id, "/payments", rent, finance, "follow_up")
        await self.report_and_close(request_id, canary)
        return request_id

    async def held_by_screening_then_rejected(self) -> str:
        canary = canaries_of("screened")
        request_id, _ = await self.submit("screened", payee={"name": "Northwind Security", "country": "KE", "account": canary["account"]})
        cw = ("caseworker", "cw-1")
        await self.until_status(request_id, "screening_hold")
        await self.act(request_id, "/screening-clearance", {"note": canary["clearance_note"]}, cw, "awaiting_decision")
        await self.act(request_id, "/decisions", {"kind": "reject", "note": canary["rejection_note"]}, cw, "rejected")
        return request_id

    async def withdrawn(self) -> str:
        request_id, canary = await self.submit("withdrawn")
        await self.until_status(request_id, "awaiting_decision")
        await self.act(request_id, "/withdraw", {"reason": canary["withdrawal_reason"]}, ("intermediary", "int-1", "ngo-1"), "withdrawn")
        return request_id

    async def paid_through_stripe(self) -> str:
        request_id, canary = await self.submit(
            "stripe", payee={"name": canaries_of("stripe")["payee_name"], "country": "KE", "rail": "stripe",
                             "stripe_account": canaries_of("stripe")["stripe_account"]}
        )  # fmt: skip
        await self.until_status(request_id, "awaiting_decision")
        await self.approve(request_id, {"minor_units": 150_000, "currency": "EUR"}, canary["approval_note"])
        await self.until_status(request_id, "follow_up")
        await self.report_and_close(request_id, canary)
        return request_id

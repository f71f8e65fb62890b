"""A unique canary string in every sensitive field of a case, and the case taken to closed through
the API: tests then search everything haven wrote for the canaries."""

from __future__ import annotations

from datetime import date

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

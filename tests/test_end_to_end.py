"""End to end, as a new user would: `haven run` (the Temporal dev server persisting to disk, the
worker and the API), tokens from `haven token`, a request taken to closed over HTTP, then a restart
that finds every request, and a workflow left waiting, still there."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import httpx

from haven.localstack import LocalHaven

def _until(http: httpx.Client, url: str, headers, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(url, headers=headers).json()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"{url} is {body['status']}, waited for {status}"
        time.sleep(0.1)


REQUEST = {
    "category": "secure_communications",
    "urgency": "critical",
    "country": "BY",
    "amount": {"minor_units": 120_000, "currency": "EUR"},
    "threat_level": "high",
    "threat_summary": "Phone seized at a border check.",
    "purpose": "Replacement phone and secure set-up.",
    "defender": {"pseudonym": "heron-3"},
    "payee": {"name": "Digital Safety Partners", "country": "LT", "account": "LT12 1000 0111 0100 1000"},
}


def test_make_run_lifecycle_and_restart(tmp_path):
    haven = LocalHaven(tmp_path / "var")
    haven.start()
    try:
        intermediary = haven.token("--role", "intermediary", "--sub", "int-1", "--org", "ngo-1")
        caseworker = haven.token("--role", "caseworker", "--sub", "cw-1")
        second_caseworker = haven.token("--role", "caseworker", "--sub", "cw-2")
        finance = haven.token("--role", "finance", "--sub", "fin-1")
        with httpx.Client(base_url=haven.base_url, timeout=10) as http:
            created = http.post("/v1/grant-requests", json=REQUEST, headers={**intermediary, "Idempotency-Key": "e2e-1"})
            assert created.status_code == 202, created.text
            url = f"/v1/grant-requests/{created.json()['id']}"
            case = _until(http, url, caseworker, "awaiting_decision")
            approve = {"kind": "approve", "amount": {"minor_units": 120_000, "currency": "EUR"}}
            # High risk (critical, high threat, high-risk country): four eyes.
            assert case["risk"]["tier"] == "high"
            assert http.post(f"{url}/decisions", json=approve, headers=caseworker).json()["status"] == "awaiting_decision"
            assert http.post(f"{url}/decisions", json=approve, headers=second_caseworker).json()["status"] == "approved"
            _until(http, url, finance, "payment_pending")
            payment = {"amount": {"minor_units": 120_000, "currency": "EUR"}, "reference": "SEPA-E2E-1", "paid_on": datetime.now(timezone.utc).date().isoformat()}
            assert http.post(f"{url}/payments", json=payment, headers=finance).json()["status"] == "paid"
            _until(http, url, caseworker, "follow_up")
            report = {"text": "Phone replaced and set up. canary-report-e2e-5a1f", "receipts": ["R-1"]}
            assert http.post(f"{url}/reports", json=report, headers=intermediary).status_code == 200
            assert http.post(f"{url}/report-acceptance", json={}, headers=caseworker).json()["status"] == "closed"
            _until(http, url, caseworker, "closed")

            waiting = http.post("/v1/grant-requests", json=REQUEST, headers={**intermediary, "Idempotency-Key": "e2e-2"})
            waiting_url = f"/v1/grant-requests/{waiting.json()['id']}"
            _until(http, waiting_url, caseworker, "awaiting_decision")
            # The worker's dispatcher delivered the notifications: in dev mode, as mail files.
            deadline = time.monotonic() + 15
            while not list((haven.var_dir / "mail").glob("*.eml")) and time.monotonic() < deadline:
                time.sleep(0.2)
            mails = [p.read_text() for p in (haven.var_dir / "mail").glob("*.eml")]
            assert any("cw-1@example.org" in m and "decision needed" in m for m in mails), mails
            assert not any("heron-3" in m or "Phone seized" in m for m in mails)
    finally:
        haven.stop()
    # The report went through a Workflow Update: Temporal's own database holds it sealed only.
    temporal_files = [p.read_bytes() for p in haven.var_dir.glob("temporal.db*")]
    assert temporal_files and any(b"binary/encrypted" in data for data in temporal_files)
    assert not any(b"canary-report-e2e-5a1f" in data for data in temporal_files)

    haven.start()  # same ./var: the same Temporal history and app database
    try:
        with httpx.Client(base_url=haven.base_url, timeout=10) as http:
            closed = http.get(url, headers=caseworker).json()
            assert closed["status"] == "closed" and closed["payments"][0]["reference"] == "SEPA-E2E-1"
            assert http.post(f"{waiting_url}/decisions", json=approve, headers=caseworker).json()["status"] == "awaiting_decision"
            assert http.post(f"{waiting_url}/decisions", json=approve, headers=second_caseworker).json()["status"] == "approved"
            _until(http, waiting_url, finance, "payment_pending")
    finally:
        haven.stop()


def test_token_works_from_a_second_terminal_without_dev_mode_set(tmp_path):
    """`make run` sets HAVEN_DEV_MODE for itself only; the README's token commands run elsewhere."""
    import os
    import subprocess

    from haven.localstack import HAVEN

    env = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")} | {"HAVEN_VAR_DIR": str(tmp_path)}
    out = subprocess.run([HAVEN, "token", "--role", "caseworker", "--sub", "cw-1"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(".") == 2 and (tmp_path / "secrets" / "jwt-hs256").exists()


def test_the_api_refuses_to_start_without_an_identity_provider(tmp_path):
    """Outside dev mode there is no token the API could trust: it says so and exits, at once."""
    import os
    import subprocess

    from haven.localstack import HAVEN

    env = {k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")} | {"HAVEN_VAR_DIR": str(tmp_path)}
    out = subprocess.run([HAVEN, "api"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "HAVEN_JWKS_URL" in out.stderr and "Traceback" not in out.stderr


def test_make_run_pays_a_stripe_payee_through_the_local_stripe_server(tmp_path):
    """`make run` (HAVEN_LOCAL_STRIPE=true): a Stripe payee is paid by one transfer on the local
    Stripe server, which carries ids only; the server is refused with a Stripe key or outside dev mode."""
    import subprocess

    from haven.localstack import HAVEN

    for env, says in (
        ({"HAVEN_STRIPE_API_KEY": "sk_live_not_for_here"}, "cannot be combined with HAVEN_STRIPE_API_KEY"),
        ({"HAVEN_DEV_MODE": "false"}, "HAVEN_DEV_MODE=true"),
    ):
        refused = LocalHaven(tmp_path / "refused", HAVEN_LOCAL_STRIPE="true", **env)
        out = subprocess.run([HAVEN, "run"], env=refused.env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr

    haven = LocalHaven(tmp_path / "var", HAVEN_LOCAL_STRIPE="true")
    haven.start()
    try:
        intermediary = haven.token("--role", "intermediary", "--sub", "int-1", "--org", "ngo-1")
        caseworker = haven.token("--role", "caseworker", "--sub", "cw-1")
        stripe_payee = {"name": "Digital Safety Partners", "country": "LT", "rail": "stripe", "stripe_account": "acct_devpayee"}
        # Medium risk (critical, high threat, KE) and EUR 1,500: one caseworker's approval.
        request = {**REQUEST, "country": "KE", "payee": stripe_payee}
        with httpx.Client(base_url=haven.base_url, timeout=10) as http:
            created = http.post("/v1/grant-requests", json=request, headers={**intermediary, "Idempotency-Key": "e2e-stripe"})
            assert created.status_code == 202, created.text
            request_id = created.json()["id"]
            url = f"/v1/grant-requests/{request_id}"
            _until(http, url, caseworker, "awaiting_decision")
            approve = {"kind": "approve", "amount": request["amount"]}
            assert http.post(f"{url}/decisions", json=approve, headers=caseworker).json()["status"] == "approved"
            case = _until(http, url, caseworker, "follow_up")
            (transfer,) = httpx.get(f"{haven.stripe_url}/_control/transfers").json()["data"]
            assert transfer["destination"] == "acct_devpayee" and transfer["amount"] == 120_000 and transfer["currency"] == "eur"
            assert transfer["metadata"] == {"request_id": request_id, "tranche": "1"}
            assert case["payments"][0]["status"] == "paid" and case["payments"][0]["reference"] == transfer["id"]
            # Its transfer.created event went, signed, to this haven's webhook endpoint.
            deadline = time.monotonic() + 10
            while not (sent := httpx.get(f"{haven.stripe_url}/_control/deliveries").json()["data"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [(d["type"], d["url"], d["status"]) for d in sent] == [
                ("transfer.created", f"{haven.base_url}/v1/webhooks/stripe", 200)
            ]
    finally:
        haven.stop()

"""Injection strings and text in many scripts, in every field of a submission and in the query.

Free text (what happened, the purpose, pseudonyms, payee names, account references) must take any
script and come back byte for byte, never interpreted; coded fields (category, country, currency…)
must refuse anything that is not one of their codes with a 422 that names the field. Control
characters are refused everywhere. A refused submission leaves nothing behind."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import pytest

from tests.api_harness import BODY, Api, assert_problem

HOSTILE = {
    "sql": "'; DROP TABLE grant_requests; --",
    "sql_union": "1' UNION SELECT sensitive FROM grant_requests --",
    "html": "<script>alert('x')</script>",
    "template": "{{7*7}} ${7*7} %s%n",
    "path": "../../../etc/passwd",
    "nosql": '{"$gt": ""}',
    "crlf": "line\r\nInjected-Header: x",
    "arabic": "مدافعة عن حقوق الإنسان",
    "cyrillic": "правозащитница",
    "chinese": "人权捍卫者",
    "vietnamese": "Nguyễn Thị Minh Khai",
    "rtl_override": "\u202egnp.exe",
    "emoji": "👩🏽‍⚖️ lawyer",
    "nul": "a\x00b",
    "bell": "ring\x07",
}
CONTROL = {"nul", "bell"}

FREE_TEXT = ["threat_summary", "purpose", "defender.pseudonym", "payee.name", "payee.account"]
CODED = ["category", "urgency", "country", "threat_level", "amount.currency", "payee.country", "payee.rail"]


def _with(path: str, value: Any) -> dict:
    body = copy.deepcopy(BODY)
    *parents, leaf = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    target[leaf] = value
    return body


def _read(details: dict, path: str) -> Any:
    # In the case file, everything but the coded fields sits under "details".
    value: Any = details
    for part in path.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("kind", list(HOSTILE))
async def test_every_field_takes_hostile_text_safely(api: Api, kind: str):
    text = HOSTILE[kind]
    for field in FREE_TEXT + CODED:
        # Accepted requests' workflows write events meanwhile; count the requests themselves.
        requests_before = (await api.counts())[0]
        response = await api.submit(_with(field, text))
        if field in CODED or kind in CONTROL:
            body = assert_problem(response, 422, "validation-error")
            assert field in [e["field"] for e in body["errors"]], (field, body)
            assert (await api.counts())[0] == requests_before, f"{field}: a refused submission left a request behind"
            continue
        assert response.status_code == 202, (field, response.text)
        case = await api.http.get(f"/v1/grant-requests/{response.json()['id']}", headers=api.token("caseworker", "cw-1"))
        assert _read(case.json()["details"], field) == text, f"{field} did not come back unchanged"


@pytest.mark.parametrize("kind", ["sql", "sql_union", "html", "path", "arabic", "nul"])
async def test_hostile_text_in_the_path_and_query_is_refused_cleanly(api: Api, kind: str):
    text = HOSTILE[kind]
    headers = api.token("caseworker", "cw-1")
    missing = await api.http.get(f"/v1/grant-requests/{quote(text, safe='')}", headers=headers)
    assert missing.status_code in (404, 422), missing.text
    assert missing.headers["content-type"] == "application/problem+json"
    for parameter in ("country", "category", "urgency", "status", "cursor", "overdue"):
        listed = await api.http.get("/v1/grant-requests", params={parameter: text}, headers=headers)
        body = assert_problem(listed, 422, "validation-error")
        assert parameter in [e["field"].split(".")[0] for e in body["errors"]]
    # Someone's subject may contain anything; filtering by it must simply find nothing.
    assigned = await api.http.get("/v1/grant-requests", params={"assigned_to": text}, headers=headers)
    assert assigned.status_code == 200 and assigned.json()["items"] == []


async def test_an_unknown_currency_is_refused_by_the_policy(api: Api):
    before = await api.counts()
    body = assert_problem(await api.submit(_with("amount.currency", "ZZZ")), 422, "intake-policy")
    assert body["errors"][0]["field"] == "amount.currency"
    assert await api.counts() == before


async def test_a_number_is_not_taken_for_a_date(api):
    """Pydantic would read 0 or 1.5e9 as a Unix timestamp; dates here are written as dates."""
    finance = api.token("finance", "fin-1")
    for day in ("0", "1764028800", "2.2873447934077084e-234", "24/11/2026"):
        response = await api.http.get("/v1/reconciliations", params={"day": day}, headers=finance)
        assert_problem(response, 422, "validation-error")
    for paid_on in (0, 1764028800, "2026-11-24T10:00:00"):
        body = {"amount": {"minor_units": 1, "currency": "EUR"}, "reference": "SEPA-1", "paid_on": paid_on}
        response = await api.http.post("/v1/grant-requests/gr_none/payments", json=body, headers=finance)
        assert_problem(response, 422, "validation-error")

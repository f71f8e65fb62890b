"""Slow clients against the API as `haven api` serves it (haven.cli._serve_api: uvicorn on a real
socket on 127.0.0.1): a connection that sends its headers or its body a byte at a time, or nothing
at all, is answered 408 and closed once the header or body deadline passes, instead of being held
without limit; a client that is merely slow within the deadlines is served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from haven.localstack import free_port
from tests.conftest import make_settings

HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 1.5
PATIENCE = 6.0  # how long the test waits for the server to give up (old code never did)


@pytest.fixture
async def server(time_skipping_env, sqlite_db, tmp_path):
    from haven.cli import _serve_api

    settings = make_settings(
        tmp_path, sqlite_db.url, api_port=free_port(), api_header_timeout_seconds=HEADER_TIMEOUT, api_body_timeout_seconds=BODY_TIMEOUT,
        stripe_webhook_secret="whsec_slow",  # so that the Stripe webhook reads its body
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(_serve_api(settings, time_skipping_env.client, sqlite_db, stop))
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", settings.api_port)
            writer.close()
            break
        assert time.monotonic() < deadline and not task.done(), "the API did not start"
        await asyncio.sleep(0.05)
    yield settings.api_port
    stop.set()
    await asyncio.wait_for(task, 15)


async def _trickle(port: int, head: bytes, body: bytes = b"", *, every: float = 0.1, prefix: bytes = b""):
    """Sends `prefix` at once, then `head` and `body` one byte every `every` seconds, while reading
    what the server answers. Returns (answer, seconds until the server closed, or None if it
    was still open after PATIENCE)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = bytearray()

    async def read() -> None:
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread: reset, still closed
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        writer.write(prefix)
        for byte in head + body:
            if reading.done() or (answer and not answer.startswith(b"HTTP/1.1 200 ")):
                break  # answered (an earlier request's 200 aside): stop sending
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.wait([reading], timeout=every)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), max(0.0, PATIENCE - (time.monotonic() - started)))
        closed = time.monotonic() - started if reading.done() else None
        return bytes(answer), closed
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _problem(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"content-type: application/problem+json" in head.lower() and b"connection: close" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 408 and problem["type"] == "urn:haven:problem:request-timeout" and problem["detail"]
    return problem


POST_HEAD = b"POST /v1/grant-requests HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"


async def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_deadline(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    answer, closed = await _trickle(server, head, every=0.05)
    assert closed is not None and closed < HEADER_TIMEOUT + 1.5, f"held for {closed or PATIENCE}s"
    assert "headers" in _problem(answer)["detail"]


async def test_a_connection_that_sends_nothing_is_closed(server):
    answer, closed = await _trickle(server, b"", every=0.05)
    assert closed is not None and closed < HEADER_TIMEOUT + 1.5, f"held for {closed or PATIENCE}s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")


async def test_a_body_sent_a_byte_at_a_time_is_answered_408_at_the_body_deadline(server):
    body = json.dumps({"x": "y" * 200}).encode()[:200]
    answer, closed = await _trickle(server, b"", body, prefix=POST_HEAD, every=0.05)
    assert closed is not None and closed < BODY_TIMEOUT + 1.5, f"held for {closed or PATIENCE}s"
    assert "body" in _problem(answer)["detail"]


async def test_a_body_that_stops_half_way_is_answered_408(server):
    for path in (b"/v1/grant-requests", b"/v1/webhooks/stripe", b"/v1/codec/decode"):
        head = POST_HEAD.replace(b"/v1/grant-requests", path)
        answer, closed = await _trickle(server, b"", prefix=head + b'{"payl', every=0.05)
        assert closed is not None and closed < BODY_TIMEOUT + 1.5, (path, closed)
        _problem(answer)


async def test_a_chunked_body_or_one_promised_by_expect_100_continue_has_the_same_deadline(server):
    chunked = b"POST /v1/grant-requests HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer, closed = await _trickle(server, b"1\r\n{\r\n1\r\n\"\r\n1\r\na\r\n" * 20, prefix=chunked, every=0.05)
    assert closed is not None and closed < BODY_TIMEOUT + 1.5, f"held for {closed or PATIENCE}s"
    _problem(answer)
    expecting = POST_HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    answer, closed = await _trickle(server, b"", prefix=expecting)
    assert closed is not None and closed < BODY_TIMEOUT + 1.5, f"held for {closed or PATIENCE}s"
    _problem(answer[answer.index(b"HTTP/1.1 408"):])


async def test_many_slow_connections_at_once_are_all_cut_off_and_others_are_served_meanwhile(server):
    import httpx

    slow = [
        asyncio.create_task(_trickle(server, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"c" * 100, every=0.1)) for _ in range(100)
    ] + [asyncio.create_task(_trickle(server, b"x" * 100, prefix=POST_HEAD, every=0.1)) for _ in range(100)]
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server}", timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
    outcomes = await asyncio.gather(*slow)
    held = [closed for _, closed in outcomes if closed is None or closed > BODY_TIMEOUT + 2]
    assert not held, f"{len(held)} of {len(slow)} slow connections were held"
    # Each was told why (unless the close reset the connection before it read the answer).
    assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408 ") for answer, _ in outcomes)


async def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline_too(server):
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer, closed = await _trickle(server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"b" * 300, prefix=first, every=0.05)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 2, answer
    assert closed is not None and closed < HEADER_TIMEOUT + 1.5, f"held for {closed or PATIENCE}s"


async def test_a_client_slow_within_the_deadlines_is_served(server):
    head = b"POST /v1/grant-requests HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    answer, _ = await _trickle(server, head[-40:], b"{}", prefix=head[:-40], every=0.01)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]  # the body arrived and was read; no token
    # A keep-alive connection is kept for the next request, then closed when idle (uvicorn's timeout).
    answer, closed = await _trickle(server, b"", prefix=b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"408" not in answer

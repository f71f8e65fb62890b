"""How `haven api` (and `haven run`) serve the app: uvicorn, with deadlines for slow clients.

A client must send a request's headers within HAVEN_API_HEADER_TIMEOUT_SECONDS of opening the
connection (or of the previous answer, on a kept-alive connection), and its body within
HAVEN_API_BODY_TIMEOUT_SECONDS of the headers; otherwise it is answered 408 (a problem body) and
the connection is closed. Without them a connection that trickles a byte now and then is held for
as long as it likes, and a few hundred such connections hold the API. uvicorn has neither deadline
(its keep-alive timeout only ends idle connections between requests): the header deadline is kept
by the HTTP protocol below (h11), the body deadline by an ASGI middleware (BodyDeadline), which
holds under any server."""

from __future__ import annotations

import asyncio
import json

import uvicorn
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.problems import PROBLEM_JSON, problem_response
from haven.settings import Settings


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning",
        http=header_deadline_protocol(settings.api_header_timeout_seconds),
    )  # fmt: skip


def _timeout_answer(detail: str) -> bytes:
    body = json.dumps(
        {"type": "urn:haven:problem:request-timeout", "title": "Request timeout", "status": 408, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 408 Request Timeout\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's headers. When it passes with part
    of a request received, the answer is 408 and the connection closes; with nothing received
    (an idle connection), it just closes."""

    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._cycle_seen = None
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._cycle_seen:  # a request's headers are in
            self._cycle_seen = self.cycle
            self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # for the next request's headers (handle_events disarms it if they are already in)
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request is in: say why it ends
            detail = f"the request's headers did not arrive within {self.header_timeout:g} seconds"
            self.transport.write(_timeout_answer(detail))
        self.transport.close()


def header_deadline_protocol(seconds: float) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})


class _BodyTooLate(HTTPException):
    """Raised into the app from `receive`, after the 408 went out: it unwinds the app like any
    HTTP error (FastAPI would turn another exception met while reading a body into a 400)."""

    def __init__(self) -> None:
        super().__init__(408, "request body timeout")


class BodyDeadline:
    """Pure ASGI middleware: the whole body must arrive within `seconds` of the headers. When it does
    not, the caller is answered 408 (a problem body, `Connection: close`) and whatever the app
    answers after that is dropped."""

    def __init__(self, app: ASGIApp, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done = started = timed_out = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done or timed_out:
                return await receive()  # after the body: only a disconnect is left to wait for
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                timed_out = True
                if not started:
                    detail = f"the request body did not arrive within {self.seconds:g} seconds"
                    await problem_response(
                        408, "request-timeout", detail, instance=scope["path"], headers={"Connection": "close"}
                    )(scope, receive, send)  # fmt: skip
                raise _BodyTooLate from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def app_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # the 408 is the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, timed_receive, app_send)

"""`X-Request-Id`: a client's own id for its request, echoed in the answer and used downstream.

Given, the id goes to Triton as the request's id, and the `llm` model makes it the engine's
request id (backends/pagedllm/model.py), so a request is named alike in the client's logs and
the server's; a request of several prompts runs as `<id>-0`, `<id>-1`, ... Not given, the
service names the request itself (`openai-<random>`) and sends no header back.
"""
from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
MAX_LEN = 256


def request_id(request: Request) -> str | None:
    """The request's X-Request-Id, or None (too long or unprintable ids are cut or dropped)."""
    value = request.headers.get(HEADER)
    if not value or not value.isprintable():
        return None
    return value[:MAX_LEN]


class EchoRequestId:
    """Pure ASGI middleware: every answer to a request with X-Request-Id carries it back."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = dict(scope.get("headers") or []).get(HEADER.encode())
        if not value:
            await self.app(scope, receive, send)
            return

        async def echo(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = value.decode("latin-1")[:MAX_LEN]
            await send(message)

        await self.app(scope, receive, echo)

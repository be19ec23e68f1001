"""Responses that notice a client going away, so its generation is cancelled at once.

Streamed answers are server-sent events (`data: {...}\\n\\n`, ending `data: [DONE]\\n\\n`).
`EventStream` always listens for the client's disconnect while it streams (Starlette's
StreamingResponse stops listening under ASGI 2.4 and notices only at its next write, which can be
a whole prefill away); on a disconnect the body generator is cancelled and closed, and the
response's `on_close` callback cancels the generation in the engine.

`unless_disconnected` does the same for a request answered in one piece: the work runs in a task,
and a disconnect first stops the generation, then cancels the task.
"""
from __future__ import annotations

import asyncio
import json

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


# Characters that str.splitlines() breaks lines at although JSON may carry them raw in a string.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def event(data: str | dict) -> str:
    """One SSE event carrying `data` (a JSON text, or an object to write as JSON).

    NOTE: U+0085, U+2028 and U+2029 go out escaped. The model may well generate them, JSON lets
    them stand raw inside a string, and clients that split the stream with str.splitlines()
    (httpx's `aiter_lines`, hence many SSE readers) would cut the event in two there: our
    30-minute soak met one such chunk in 20,000 requests. JSON has them nowhere but inside
    strings, so the escape changes no value.
    """
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False)
    return f"data: {data.translate(_LINE_BREAKS)}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that cancels its body generator when the client leaves.

    Args:
        content: an async generator of str/bytes (closed however the stream ends).
        on_disconnect: called (no arguments) when the client left before the end.
        on_close: called (no arguments) once the response is over, whatever ended it; unlike
            the generator's own `finally`, it runs even if the generator never started.
    """

    media_type = "text/event-stream"

    def __init__(self, content, status_code: int = 200, headers: dict | None = None,
                 on_disconnect=None, on_close=None):
        if self.media_type == "text/event-stream":  # ours (not a relayed answer)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        super().__init__(content, status_code=status_code, headers=headers)
        self._on_disconnect = on_disconnect
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    nonlocal finished
                    try:
                        await self.stream_response(send)
                        finished = True
                    except OSError:  # the client went away mid-write
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            # NOTE: a generator suspended at a `yield` (cancelled while its chunk was being
            # sent) runs its `finally` only when closed: close it here, always.
            try:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
                if not finished and self._on_disconnect is not None:
                    self._on_disconnect()
            finally:
                if self._on_close is not None:
                    self._on_close()


class RelayedStream(EventStream):
    """Another server's answer passed through as it streams (its own headers, no media type of
    ours), with EventStream's disconnect handling."""

    media_type = None


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, coro, on_disconnect=None):
    """`await coro`, unless the client disconnects first: then `on_disconnect()` runs (it should
    stop the work: close its generation), the coroutine's task is cancelled and awaited, and
    ClientGone is raised.

    Call it after the request body was read: it reads the connection's next ASGI message.
    """
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this task was cancelled (server shutdown): take the work along
        work.cancel()
        watch.cancel()
        raise
    if work in done:
        watch.cancel()
        return work.result()
    if on_disconnect is not None:
        on_disconnect()
    work.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.gather(work, return_exceptions=True)
    raise ClientGone()

"""How one generation request runs, for both endpoints: limits, Triton, disconnects, cleanup.

    run = Run(...).start(prompt, sampling)   the client's concurrency slot, then the Triton stream
    await run.collect(n)                     an answer in one piece: every reply
    await run.first()                        a streamed answer: the first reply, before any byte
                                             is sent, so a request Triton refuses gets a real
                                             4xx status rather than an error event under a 200
    run.stream(events)                       the EventStream of the rest

Either way, a client that disconnects has its generation cancelled at once.

Whatever happens, `close()` runs once: it cancels the generation in the engine if it has not
finished, and gives the client's slot back.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request
from starlette.responses import Response

from pagedllm_openai.errors import OpenAIError, from_triton
from pagedllm_openai.limits import client_key
from pagedllm_openai.service import Collected, Service
from pagedllm_openai.sse import ClientGone, EventStream, unless_disconnected
from pagedllm_openai.replies import Reply
from pagedllm_openai.triton_client import TritonError

# A client that left gets no answer; the status only shows in logs and metrics (nginx's 499).
CLIENT_CLOSED = 499


class Run:
    """One generation request between its slot being taken and its answer being done.

    Args:
        service: the service.
        request: the HTTP request (its client, its connection).
        endpoint: for metrics ("completions", "chat").
        prompt_param: the request field holding the prompt (for error messages).
        renames: SamplingParams names -> this API's names, for error messages.
    """

    def __init__(self, service: Service, request: Request, endpoint: str, prompt_param: str,
                 renames: dict[str, str]):
        self.service = service
        self.request = request
        self.endpoint = endpoint
        self.prompt_param = prompt_param
        self.renames = renames
        self._key = client_key(request)
        self._closed = False
        self.generation = None

    def start(self, prompt: str | Sequence[int], sampling: dict,
              request_id: str | None = None) -> Run:
        """Takes the client's slot (429 when it has none left) and starts the generation
        (`request_id`: the client's X-Request-Id, or None)."""
        self.service.limiter.acquire(self._key)
        try:
            self.generation = self.service.triton.generate(prompt, sampling, request_id)
        except BaseException:
            self.service.limiter.release(self._key)
            self._closed = True
            raise
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.generation is not None:
                self.generation.close()
        finally:
            self.service.limiter.release(self._key)

    def error(self, e: TritonError) -> OpenAIError:
        return from_triton(str(e), self.prompt_param, self.renames)

    async def next_reply(self) -> Reply | None:
        """The next reply (None at the end); Triton's errors as OpenAI errors."""
        try:
            return await anext(self.generation, None)
        except TritonError as e:
            raise self.error(e) from None

    async def _collect(self, n: int) -> Collected:
        collected = Collected.empty(n)
        while (reply := await self.next_reply()) is not None:
            collected.add(reply)
        return collected

    def _gone(self) -> None:
        """The client left: count it, and stop the generation now (the engine's request is
        cancelled; whoever waits for its next reply sees the end)."""
        self.service.metrics.disconnects += 1
        self.close()

    async def collect(self, n: int) -> Collected | Response:
        """Every reply, or (the client left first) an empty 499 response; closes the run."""
        try:
            return await unless_disconnected(self.request, self._collect(n), self._gone)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        finally:
            self.close()

    async def first(self) -> Reply | Response | None:
        """The first reply, or a 499 response when the client left first (the run is closed
        then, and on any error)."""
        try:
            return await unless_disconnected(self.request, self.next_reply(), self._gone)
        except ClientGone:
            self.close()
            return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            self.close()
            raise

    def stream(self, events: AsyncIterator[str]) -> EventStream:
        """The SSE response for `events`; closing it (or the client leaving) closes the run."""
        return EventStream(events, on_disconnect=self._gone, on_close=self.close)


def stream_all(runs: list[Run], events: AsyncIterator[str]) -> EventStream:
    """Run.stream for the runs of one request (several prompts): closing it closes them all."""
    def gone() -> None:
        for run in runs:
            run._gone()

    def close() -> None:
        for run in runs:
            run.close()
    return EventStream(events, on_disconnect=gone, on_close=close)


def stream_error(e: Exception) -> dict:
    """The error event of a stream that fails after it started (OpenAI's envelope)."""
    if not isinstance(e, OpenAIError):
        e = OpenAIError(500, f"internal error ({type(e).__name__})", None, "internal_error")
    return e.body()


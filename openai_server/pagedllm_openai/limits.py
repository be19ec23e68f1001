"""The limits the service enforces before anything reaches Triton (request_limits.py has the
bounds on what one request may ask for: stop strings, n, logprobs, prompt tokens).

- Body size: a request body over max_body_bytes is refused with 413, from its Content-Length
  when it has one, else by counting while it is read (chunked uploads).
- Prompt length: a prompt over max_prompt_chars characters is refused with 400 before it is
  rendered or tokenized (a huge prompt costs the server before the engine could say no).
- Per-client concurrency: one client (its verified API key, or with no keys configured its
  peer address) may have at most max_concurrent_per_client requests in flight; the next gets 429
  while other clients are served.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import contextmanager

from starlette.requests import Request

from pagedllm_openai.errors import OpenAIError


def too_large(limit: int, setting: str = "max_body_bytes") -> OpenAIError:
    return OpenAIError(413, f"the request body is larger than this server's limit of {limit} "
                            f"bytes ({setting})", None, "body_too_large")


# A refused body is still read (and dropped) up to this much, so that a client that sends its
# body before reading the answer (urllib, requests) gets the 413 instead of a broken pipe.
DRAIN_BYTES = 16 << 20


async def _drain(request: Request) -> None:
    """Reads and drops what is left of the body, up to DRAIN_BYTES, unless the client waits
    for `100 Continue` (it then reads the 413 without sending the body at all)."""
    if request.headers.get("expect", "").lower() == "100-continue":
        return
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_BYTES:
                return
    except Exception:  # noqa: BLE001 - the client may be gone; the 413 is all that is left
        return


async def check_content_length(request: Request, limit: int,
                               setting: str = "max_body_bytes") -> None:
    """413 when the declared Content-Length is over `limit` (the body is drained first)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise OpenAIError(400, f"Content-Length is not a number: {declared!r}", None,
                          "bad_header") from None
    if size > limit:
        await _drain(request)
        raise too_large(limit, setting)


async def limited_stream(request: Request, limit: int,
                         setting: str = "max_body_bytes") -> AsyncIterator[bytes]:
    """The request body's chunks, raising 413 once more than `limit` bytes came (`setting`:
    the limit's name, for the message)."""
    await check_content_length(request, limit, setting)
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            await _drain(request)
            raise too_large(limit, setting)
        if chunk:
            yield chunk


async def read_body(request: Request, limit: int, setting: str = "max_body_bytes") -> bytes:
    """The whole request body, at most `limit` bytes (else 413)."""
    return b"".join([chunk async for chunk in limited_stream(request, limit, setting)])


def check_prompt_chars(chars: int, limit: int, param: str) -> None:
    """400 naming `param` when a prompt has more than `limit` characters."""
    if chars > limit:
        raise OpenAIError(400, f"{param} is {chars} characters long; this server takes at most "
                               f"{limit} (max_prompt_chars)", param, "prompt_too_long")


# Where api_keys.RequireApiKey puts the id of the key a request was verified with.
CLIENT_SCOPE = "pagedllm.client"


def client_key(request: Request) -> str:
    """Who a request is from: the API key it was verified with (api_keys.py), else its peer
    address. NOTE: never a key that was not verified: a client could invent one per request and
    never reach its limit."""
    verified = request.scope.get(CLIENT_SCOPE)
    if verified:
        return verified
    host = request.client.host if request.client else "unknown"
    return "ip:" + host


class ClientLimiter:
    """Counts each client's requests in flight.

    NOTE: only the event loop's thread touches the counts (acquire and release run in request
    handlers and their response generators), so no lock is needed.
    """

    def __init__(self, max_per_client: int):
        self.max_per_client = max_per_client
        self._in_flight: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        """Takes a slot for `key`, or raises 429 when it has max_per_client already."""
        count = self._in_flight.get(key, 0)
        if count >= self.max_per_client:
            raise OpenAIError(429, f"too many concurrent requests from this client: "
                                   f"{count} in flight, at most {self.max_per_client} "
                                   "(max_concurrent_per_client)", None,
                              "too_many_concurrent_requests")
        self._in_flight[key] = count + 1

    def release(self, key: str) -> None:
        count = self._in_flight.get(key, 0) - 1
        if count > 0:
            self._in_flight[key] = count
        else:
            self._in_flight.pop(key, None)

    @contextmanager
    def slot(self, key: str):
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    def in_flight(self) -> int:
        return sum(self._in_flight.values())

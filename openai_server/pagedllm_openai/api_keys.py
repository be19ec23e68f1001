"""API keys: without a valid one, every route but health answers 401 (on /v1 and on /v2).

Keys come from `--api-key` (repeatable), `PAGEDLLM_API_KEY` (one key, or several separated by
commas) and `--api-key-file` / `PAGEDLLM_API_KEY_FILE` (one key a line; blank lines and lines
starting with # are skipped). A client sends its key as `Authorization: Bearer <key>` (OpenAI's
SDK does) or as an `api-key: <key>` header (for KServe clients, whose own Authorization may be
taken). With no key configured every request is let in, as before.

The verified key is who the client is: the per-client limits (limits.py) count per key, and with
no keys configured per peer address only, so inventing a new Bearer token per request changes
nothing. Keys are kept as SHA-256 digests and compared in constant time (hmac.compare_digest
against every configured key, with no early exit).

Open without a key: /v1/health/live, /v1/health/ready, /v2/health/live, /v2/health/ready (load
balancers and container health checks probe them), vLLM's /health, and /v1/metrics and /metrics
(the same numbers as Triton's own metrics port).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from pagedllm_openai.errors import OpenAIError
from pagedllm_openai.limits import CLIENT_SCOPE

OPEN_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/v2/health/live",
                        "/v2/health/ready", "/v1/metrics", "/health", "/metrics"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_key(key: str, source: str) -> str:
    """`key` when it can travel in a header (printable ASCII, no spaces); else ValueError naming
    `source` (the key itself is never put in a message)."""
    if not key or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"{source}: an API key must be non-empty printable ASCII without "
                         "spaces")
    return key


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file: one a line; blank lines and # comments skipped.

    Raises:
        ValueError: the file cannot be read, holds no key, or a line is not a valid key.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"api_key_file {path}: cannot be read ({type(e).__name__})") from None
    keys = [check_key(line.strip(), f"api_key_file {path}, line {i}")
            for i, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not keys:
        raise ValueError(f"api_key_file {path}: holds no key")
    return keys


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, as digests (empty: no key required)."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, keys: tuple[str, ...]) -> ApiKeys:
        return cls(tuple(_digest(check_key(k, "api_key")) for k in keys))

    @property
    def required(self) -> bool:
        return bool(self.digests)

    def client(self, presented: str) -> str | None:
        """The client id ("key:<first 16 hex digits of its digest>") when `presented` is one of
        the keys, else None; the time taken does not depend on which key, or how much of it,
        matched."""
        digest = _digest(presented)
        found = None
        for known in self.digests:
            if hmac.compare_digest(digest, known):
                found = known
        return None if found is None else "key:" + found.hex()[:16]


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else an `api-key` header."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key", "").strip() or None


class RequireApiKey:
    """ASGI middleware: a request to any path but OPEN_PATHS needs a valid key (else 401); the
    verified client id goes into the scope (CLIENT_SCOPE) for the per-client limits."""

    def __init__(self, app: ASGIApp, keys: ApiKeys):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.required or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        key = presented_key(headers)
        client = self.keys.client(key) if key is not None else None
        if client is None:
            await _refuse(scope, send, "no API key given: send it as 'Authorization: Bearer "
                                       "<key>' (or as an 'api-key' header)" if key is None
                          else "the API key given is not valid")
            return
        scope[CLIENT_SCOPE] = client
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, message: str) -> None:
    """A 401 in the path's error shape: OpenAI's on /v1, Triton's on /v2."""
    error = OpenAIError(401, message, None, "invalid_api_key")
    path = scope["path"]
    body = {"error": message} if path == "/v2" or path.startswith("/v2/") else error.body()
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": data})

"""/v2/...: Triton's own HTTP API (KServe v2 and its generate extension), behind a guard.

Why a guard: tritonserver 2.51's HTTP server has no body-size limit, and a form-urlencoded POST
of 4 MB or more crashes it (SIGSEGV), taking every model down. So `make serve` puts Triton's HTTP
port on an internal address and clients reach it through here, where:

- only the data plane is forwarded (data_plane.py): model load/unload, the repository index,
  shared memory, logging and trace get 403;
- a body over max_body_bytes is refused with 413 (its Content-Length first; a chunked body is
  counted while it streams to Triton, and the upload cut short);
- an application/x-www-form-urlencoded body is held to at most FORM_LIMIT whatever
  max_body_bytes says (Triton has no use for form bodies; they are only the crash's trigger);
- a generate[_stream] body is parsed here (json_body.py) and checked against the model's declared
  inputs (generate_inputs.py): an unknown key, a value of the wrong type or count, a missing
  required input (Triton 2.51 answers a missing `text_input` with an empty 200) gets 400 naming
  it, where Triton would answer 500 naming nothing, or ignore it;
- a request with a body takes one of its client's max_concurrent_per_client slots (429).

Everything else passes through unchanged, streaming both ways (httpx), SSE included. Errors of
the guard itself use Triton's HTTP error shape, `{"error": "<message>"}`, which its clients
(tritonclient.http) read. A client that disconnects from a proxied generate_stream gets its
request cancelled in the engine: the guard remembers the cancel_token the events carried.
"""
from __future__ import annotations

import logging
import re

import httpx
from starlette.requests import Request
from starlette.responses import Response

from pagedllm_openai.data_plane import check_data_plane
from pagedllm_openai.errors import OpenAIError
from pagedllm_openai.json_body import parse_json_object
from pagedllm_openai.limits import client_key, limited_stream, read_body, too_large
from pagedllm_openai.service import Service
from pagedllm_openai.sse import RelayedStream
from pagedllm_openai.triton_client import ENSEMBLE, LLM

logger = logging.getLogger("pagedllm.openai")

FORM_LIMIT = 1 << 20
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "trailers", "transfer-encoding", "upgrade", "host"}
_GENERATE = re.compile(r"^(?P<path>/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?)"
                       r"/generate(?P<stream>_stream)?$")
_TOKEN = re.compile(rb'"cancel_token"\s*:\s*"([^"\\]+)"')


def body_limit(request: Request, max_body_bytes: int) -> tuple[int, str]:
    """The body limit of this request and its name (form-urlencoded bodies get the lower
    FORM_LIMIT)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded" and max_body_bytes > FORM_LIMIT:
        return FORM_LIMIT, "the limit for form-urlencoded bodies: large ones crash tritonserver"
    return max_body_bytes, "max_body_bytes"


async def check_generate_body(service: Service, model_path: str, model: str,
                              body: bytes) -> None:
    """400 naming the field for a generate body that is not a JSON object, or that the model's
    declared inputs cannot take (Triton would answer 500, or ignore the field)."""
    data = parse_json_object(body)
    inputs = await service.model_inputs.get(service.http, service.config.triton_http_url,
                                            model_path, model)
    if inputs is not None:
        inputs.check(data)


class _Upload:
    """The request body on its way to Triton, counted; remembers whether it overflowed."""

    def __init__(self, request: Request, limit: int, setting: str):
        self.overflowed = False
        self._chunks = limited_stream(request, limit, setting)

    async def __aiter__(self):
        try:
            async for chunk in self._chunks:
                yield chunk
        except OpenAIError:
            self.overflowed = True
            raise


async def proxy(service: Service, request: Request) -> Response:
    """Forwards one request to Triton's HTTP port and streams its answer back.

    A request with a body (an inference) holds one of its client's concurrency slots until its
    answer is over, as a /v1 generation does.
    """
    check_data_plane(request.method, request.url.path)
    if request.method not in ("POST", "PUT", "PATCH"):
        return await _forward(service, request, lambda: None)
    key = client_key(request)
    service.limiter.acquire(key)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            service.limiter.release(key)

    try:
        return await _forward(service, request, release)
    except BaseException:
        release()
        raise


async def _forward(service: Service, request: Request, release) -> Response:
    limit, setting = body_limit(request, service.config.max_body_bytes)
    path = request.url.path
    generate = _GENERATE.match(path)
    upload = None
    content: bytes | _Upload | None = None
    if request.method in ("POST", "PUT", "PATCH"):
        if generate:
            content = await read_body(request, limit, setting)
            await check_generate_body(service, generate["path"], generate["model"], content)
        else:
            upload = content = _Upload(request, limit, setting)
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
               and not (content is None and k.lower() == "content-length")]  # a GET's body is not sent on
    if "accept-encoding" not in request.headers:
        headers.append(("accept-encoding", "identity"))  # not httpx's default: gzip
    url = service.config.triton_http_url + path
    upstream_request = service.http.build_request(
        request.method, url, params=request.url.query or None, headers=headers,
        content=content)
    try:
        upstream = await service.http.send(upstream_request, stream=True)
    except Exception as e:
        if upload is not None and upload.overflowed:
            raise too_large(limit, setting) from None
        if isinstance(e, OpenAIError):
            raise
        if isinstance(e, httpx.TransportError):
            raise OpenAIError(503, f"Triton's HTTP endpoint is not reachable: "
                                   f"{type(e).__name__}: {e}", None, "unavailable") from None
        raise
    out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
    model = generate["model"] if generate and generate["stream"] else None
    relay = _Relay(service, upstream, model if model in (ENSEMBLE, LLM) else None, release)
    return RelayedStream(relay.chunks(), status_code=upstream.status_code, headers=out_headers,
                         on_close=relay.close)


class _Relay:
    """Triton's answer streamed back; for generate_stream, the cancel_token it carried, so that
    a client leaving early gets its request cancelled in the engine."""

    def __init__(self, service: Service, upstream: httpx.Response, model: str | None, release):
        self._service = service
        self._release = release
        self._upstream = upstream
        self._model = model
        self._token = ""
        self._tail = b""
        self._complete = False

    async def chunks(self):
        async for chunk in self._upstream.aiter_raw():
            if self._model is not None:
                self._scan(chunk)
            yield chunk
        self._complete = True

    def _scan(self, chunk: bytes) -> None:
        data = self._tail + chunk
        found = _TOKEN.findall(data)
        if found:
            self._token = found[-1].decode()
        self._tail = data[-256:]

    def close(self) -> None:
        self._release()
        triton = self._service.triton
        triton.spawn(self._upstream.aclose())
        if not self._complete and self._token:
            self._service.metrics.disconnects += 1
            triton.spawn(self._cancel())

    async def _cancel(self) -> None:
        try:
            await self._service.triton.cancel(self._model, self._token)
        except Exception as e:  # noqa: BLE001 - it may have finished meanwhile
            logger.info("cancel of a proxied generate_stream: %s", e)

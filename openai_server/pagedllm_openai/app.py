"""The FastAPI app: routes, the error handlers that keep every answer OpenAI-shaped, lifespan.

    GET  /v1/models                 the served model
    POST /v1/completions            completions.py
    POST /v1/chat/completions       chat.py
    GET  /v1/health/live|ready      health.py
    GET  /v1/metrics                health.py
    POST /tokenize, /detokenize     tokenize.py (vLLM's)
    GET  /version                   tokenize.py
    GET  /health, /metrics          vllm_routes.py (vLLM's paths for the same two)
    *    /v2, /v2/...               proxy.py (Triton's own HTTP API, guarded)

With API keys configured, every route but health and metrics needs one (api_keys.py: 401).
X-Request-Id is echoed (request_id.py); CORS headers only for the configured allowed_origins.

Every error leaves as `{"error": {"message", "type", "param", "code"}}` with its status (on /v2,
Triton's own shape `{"error": "<message>"}`): validation errors name the field, unexpected
exceptions are logged here and answered with their type only, never a stack trace.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pagedllm_openai import chat, completions, health, proxy, tokenize, vllm_routes
from pagedllm_openai.api_keys import ApiKeys, RequireApiKey
from pagedllm_openai.chat_template import ChatTemplate
from pagedllm_openai.config import ServiceConfig
from pagedllm_openai.errors import OpenAIError
from pagedllm_openai.limits import ClientLimiter
from pagedllm_openai.request_id import EchoRequestId
from pagedllm_openai.schemas import ModelCard, ModelList
from pagedllm_openai.service import Service, validation_error
from pagedllm_openai.tokenizer import ModelTokenizer
from pagedllm_openai.tool_parsers import parser_for_template
from pagedllm_openai.triton_client import TritonClient

logger = logging.getLogger("pagedllm.openai")

_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat",
              "/v1/models": "models"}


def _service(request: Request) -> Service:
    return request.app.state.service


def create_app(config: ServiceConfig) -> FastAPI:
    """The app for `config` (reads the model directory's tokenizer and chat template now, so a
    bad checkpoint fails at startup; connects to Triton in its lifespan).

    Raises:
        ValueError: the tokenizer or the chat template cannot be loaded.
    """
    tokenizer = ModelTokenizer(config.model_dir)
    template = ChatTemplate.from_model_dir(config.model_dir, tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        triton = TritonClient(config.triton_grpc_url, config.request_timeout_s,
                              tokenizer.decode)
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.request_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=64))
        parser = config.tool_call_parser or parser_for_template(
            template.source if template is not None else None)
        service = Service(config, tokenizer, template, triton, http,
                          ClientLimiter(config.max_concurrent_per_client), tool_parser=parser)
        app.state.service = service
        app.state.readiness = health.Readiness(service)
        try:
            yield
        finally:
            await triton.close()
            await http.aclose()

    app = FastAPI(title="pagedllm OpenAI-compatible API", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    _add_routes(app)
    vllm_routes.add_routes(app)
    _add_error_handlers(app)
    app.add_middleware(RequireApiKey, keys=ApiKeys.of(config.api_keys))
    app.add_middleware(_CountRequests)
    if config.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins),
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-Id"])
    app.add_middleware(EchoRequestId)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/v1/models")
    async def models(request: Request):
        config = _service(request).config
        card = ModelCard(id=config.served_model_name, root=str(config.model_dir))
        return JSONResponse(ModelList(data=[card]).model_dump())

    @app.post("/v1/completions")
    async def create_completion(request: Request):
        return await completions.create_completion(_service(request), request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: Request):
        return await chat.create_chat_completion(_service(request), request)

    @app.post("/tokenize")
    async def tokenize_(request: Request):
        return await tokenize.tokenize(_service(request), request)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        return await tokenize.detokenize(_service(request), request)

    @app.get("/version")
    async def version():
        return tokenize.version()

    @app.get("/v1/health/live")
    async def live():
        return health.live()

    @app.get("/v1/health/ready")
    async def ready(request: Request):
        return await request.app.state.readiness.response()

    @app.get("/v1/metrics")
    async def metrics(request: Request):
        return await health.metrics(_service(request))

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]

    @app.api_route("/v2", methods=methods)
    @app.api_route("/v2/{path:path}", methods=methods)
    async def triton_http(request: Request):
        return await proxy.proxy(_service(request), request)


def _error(request: Request, error: OpenAIError) -> Response:
    if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
        return JSONResponse({"error": error.message}, status_code=error.status)
    return JSONResponse(error.body(), status_code=error.status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError):
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(request, validation_error(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(request, OpenAIError(exc.status_code, str(exc.detail), None, code))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect):
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(request, OpenAIError(500, f"internal error ({type(exc).__name__}); the "
                                                "server log has the details", None,
                                           "internal_error"))


class _CountRequests:
    """Counts /v1 generation and model requests by endpoint and status (pure ASGI: it does not
    wrap `receive`, so disconnects still reach the handlers)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = _ENDPOINTS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        status = 499

        async def counting_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            service = getattr(scope["app"].state, "service", None)
            if service is not None:
                service.metrics.request_done(endpoint, status)

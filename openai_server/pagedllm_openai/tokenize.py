"""vLLM's utility endpoints: POST /tokenize, POST /detokenize, GET /version.

    /tokenize    {"prompt": text} or {"messages": [...]} (rendered by the chat template, with
                 `add_generation_prompt`, `tools`, `chat_template_kwargs`), `add_special_tokens`
                 -> {"count", "max_model_len", "tokens"}
    /detokenize  {"tokens": [ids]} -> {"prompt": text}
    /version     {"version": the pagedllm package's version}

Tokens are the model directory's tokenizer.json's, as Triton's ensemble tokenizes a prompt (with
the tokenizer's own special tokens unless add_special_tokens is false).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse

from pagedllm_openai.errors import bad_request
from pagedllm_openai.schemas import ChatMessage
from pagedllm_openai.service import Service, parse_request
from pagedllm_openai.tools import Tool


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


async def tokenize(service: Service, request: Request) -> JSONResponse:
    req: TokenizeRequest = await parse_request(request, TokenizeRequest,
                                               service.config.max_body_bytes)
    service.check_model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise bad_request("give either prompt or messages", "prompt")
    if req.messages is not None:
        from pagedllm_openai.chat import render_prompt
        text = render_prompt(service, req)
    else:
        text = req.prompt
    tokens = service.tokenizer.encode(text, req.add_special_tokens)
    return JSONResponse({"count": len(tokens), "tokens": tokens,
                         "max_model_len": _model_len(service.config.model_dir)})


@lru_cache(maxsize=4)
def _model_len(model_dir: Path) -> int | None:
    """The model's context length (config.json's max_position_embeddings; the engine may be
    configured shorter, which Triton does not tell this service)."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get(
            "max_position_embeddings")
    except (OSError, ValueError):
        return None


async def detokenize(service: Service, request: Request) -> JSONResponse:
    req: DetokenizeRequest = await parse_request(request, DetokenizeRequest,
                                                 service.config.max_body_bytes)
    service.check_model(req.model)
    vocab = service.tokenizer.vocab_size
    bad = [t for t in req.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"tokens must be in [0, {vocab}), got {bad[:5]}", "tokens")
    return JSONResponse({"prompt": service.tokenizer.decode(req.tokens)})


def version() -> JSONResponse:
    try:
        value = metadata.version("pagedllm")
    except metadata.PackageNotFoundError:
        value = "unknown"
    return JSONResponse({"version": value})

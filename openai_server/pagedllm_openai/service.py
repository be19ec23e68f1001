"""What every request handler needs, built once at startup: `Service`.

Also the steps both generation endpoints share: parsing a JSON body into a request model (a
pydantic error becomes a 400 naming the field the way OpenAI spells it, `messages.[0].role`),
the model-name check (404), and collecting a generation's replies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from pagedllm_openai.chat_template import ChatTemplate
from pagedllm_openai.config import ServiceConfig
from pagedllm_openai.errors import OpenAIError, bad_request
from pagedllm_openai.generate_inputs import InputsCache
from pagedllm_openai.json_body import parse_json_object
from pagedllm_openai.limits import ClientLimiter, read_body
from pagedllm_openai.metrics import ServiceMetrics
from pagedllm_openai.tokenizer import ModelTokenizer
from pagedllm_openai.replies import Reply
from pagedllm_openai.triton_client import TritonClient


@dataclass
class Service:
    """The service's parts (one per process; handlers reach it as request.app.state.service)."""

    config: ServiceConfig
    tokenizer: ModelTokenizer
    template: ChatTemplate | None
    triton: TritonClient
    http: httpx.AsyncClient            # Triton's HTTP and metrics endpoints
    limiter: ClientLimiter
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    model_inputs: InputsCache = field(default_factory=InputsCache)  # for /v2 generate bodies
    tool_parser: str = "hermes"        # how tool_choice auto reads tool calls (tool_parsers.py)

    def check_model(self, model: str | None) -> None:
        """404 unless `model` is the served model's name (None: the served model)."""
        if model is not None and model != self.config.served_model_name:
            raise OpenAIError(404, f"The model `{model}` does not exist; this server serves "
                                   f"`{self.config.served_model_name}`", "model",
                              "model_not_found")


def loc_param(loc: tuple) -> str | None:
    """A pydantic error location as OpenAI names a field: ('messages', 0, 'role') ->
    'messages.[0].role'."""
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def validation_error(error: ValidationError | list[dict]) -> OpenAIError:
    """The 400 for a request that does not validate: the first problem, naming its field."""
    errors = error.errors() if isinstance(error, ValidationError) else error
    first = errors[0]
    param = loc_param(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    message = message.removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field: this server does not support it"
    return bad_request(f"{param}: {message}" if param else message, param)


async def parse_request(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    """The request's JSON body as `model` (413 over `limit` bytes, 400 if not valid: json_body.py
    says how hostile bodies are answered)."""
    data = parse_json_object(await read_body(request, limit))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


@dataclass
class Collected:
    """A whole generation: per completion its text, finish reason and logprobs entries."""

    texts: list[str]
    finish_reasons: list[str | None]
    logprobs: list[list[dict]]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def empty(cls, n: int) -> Collected:
        return cls([""] * n, [None] * n, [[] for _ in range(n)])

    def add(self, reply: Reply) -> None:
        for i, text in enumerate(reply.texts):
            self.texts[i] += text
            if reply.finish_reasons[i] is not None:
                self.finish_reasons[i] = reply.finish_reasons[i]
            self.logprobs[i].extend(reply.logprobs[i] or ())
        self.prompt_tokens = reply.num_input_tokens
        self.completion_tokens += sum(reply.num_output_tokens)

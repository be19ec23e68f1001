"""The OpenAI request and response objects this service supports, as pydantic models.

Shapes follow vLLM's OpenAI server (vllm/entrypoints/openai/protocol.py), which follows OpenAI's.
Requests are validated here, so a bad value is a 400 naming its field before anything reaches
Triton. No field is silently dropped: an unknown field is a 400 naming it (vLLM and OpenAI
ignore those), and fields this server cannot honour (best_of > 1, suffix) are refused by name.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pagedllm_openai.response_format import ResponseFormat
from pagedllm_openai.tools import DeltaToolCall, Tool, ToolCall, ToolChoice

MAX_N = 64            # the engine's limit (pagedllm.sampling_params.MAX_N)
MAX_LOGPROBS = 20     # the engine's limit (pagedllm.sampling_params.MAX_LOGPROBS)
MAX_STOP = 16         # the engine's limit (pagedllm.sampling_params.MAX_STOP)
MAX_STOP_CHARS = 256  # the engine's limit (pagedllm.sampling_params.MAX_STOP_CHARS)
MAX_PROMPTS = 64      # prompts in one /v1/completions request (each a generation of its own)


def _refuse(name: str, value: Any, allowed: tuple = (None,)) -> Any:
    if value in allowed or value == {} or value == []:
        return value
    raise ValueError(f"{name} is not supported by this server")


# ---- requests ----------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    """`stream_options`: a last chunk with the usage (choices []) only when include_usage."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields common to completions and chat: the SamplingParams they map to, with its ranges
    (vLLM's extra sampling fields included)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None
    # Accepted only at its no-op value (refused by name otherwise).
    best_of: int | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop):
        if stop is not None and (stop == "" or (isinstance(stop, list) and "" in stop)):
            raise ValueError("stop strings must not be empty")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value):
        return _refuse("best_of > 1", value, (None, 1))

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options can only be given when stream is true")
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int | None, logprobs: int | None,
                 structured_outputs: dict | None = None) -> dict:
        """The `sampling_parameters` JSON object for Triton (SamplingParams names)."""
        out: dict[str, Any] = {"n": self.n, "max_tokens": max_tokens}
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                     "presence_penalty", "frequency_penalty", "seed", "stop", "stop_token_ids",
                     "allowed_token_ids", "bad_words"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if getattr(self, name):
                out[name] = True
        if not self.skip_special_tokens:
            out["skip_special_tokens"] = False
        if self.logit_bias:
            out["logit_bias"] = {int(k): v for k, v in self.logit_bias.items()}
        if self.min_tokens:
            out["min_tokens"] = self.min_tokens
        if logprobs is not None:
            out["logprobs"] = logprobs
        if structured_outputs is not None:
            out["structured_outputs"] = structured_outputs
        return out


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions. Prompts: a string, a list of strings, token ids, or a list of
    token-id lists; each prompt's n choices are numbered prompt * n + i (OpenAI's order)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt):
        prompts = prompt if isinstance(prompt, list) and prompt and isinstance(
            prompt[0], (str, list)) else [prompt]
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
        for p in prompts:
            if p == "" or p == []:
                raise ValueError("the prompt is empty")
            if isinstance(p, list) and any(t < 0 for t in p):
                raise ValueError("token ids must be >= 0")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, one or more."""
        p = self.prompt
        return list(p) if isinstance(p, list) and p and isinstance(p[0], (str, list)) else [p]

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value):
        return _refuse("suffix", value, (None, ""))


class TextPart(BaseModel):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a chat; extra keys (tool_call_id, ...) reach the template as they are."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as vLLM joins them)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def for_template(self) -> dict:
        """The message as the chat template sees it: content flattened to a string."""
        data = self.model_dump(exclude_none=True)
        data["content"] = self.text()
        return data


class ChatCompletionRequest(_SamplingRequest):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value, info: ValidationInfo):
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs to be true")
        return value

    def max_new_tokens(self) -> int | None:
        """max_completion_tokens, else max_tokens, else None (as many as the context allows)."""
        return self.max_completion_tokens or self.max_tokens


# ---- responses ---------------------------------------------------------------------------------

def _now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    """Completions' logprobs: per token its text, logprob, top alternatives and text offset."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One streamed chat event; serialized with exclude_unset (vLLM's way: no "usage" key on
    ordinary chunks, no "role" after the first delta)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "pagedllm"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo

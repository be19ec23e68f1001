"""The OpenAI request and response objects this service supports, as pydantic models.

Shapes follow vLLM's OpenAI server (vllm/entrypoints/openai/protocol.py), which follows OpenAI's.
Requests are validated here, so a bad value is a 400 naming its field before anything reaches
Triton. Unknown request fields are ignored, as vLLM and OpenAI do; fields that would change the
result but that this server cannot honour (tools, logit_bias, best_of > 1, ...) are refused by
name rather than silently dropped.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_N = 64            # the engine's limit (pagedllm.sampling_params.MAX_N)
MAX_LOGPROBS = 20     # the engine's limit (pagedllm.sampling_params.MAX_LOGPROBS)
MAX_STOP = 16         # the engine's limit (pagedllm.sampling_params.MAX_STOP)
MAX_STOP_CHARS = 256  # the engine's limit (pagedllm.sampling_params.MAX_STOP_CHARS)


def _refuse(name: str, value: Any, allowed: tuple = (None,)) -> Any:
    if value in allowed or value == {} or value == []:
        return value
    raise ValueError(f"{name} is not supported by this server")


# ---- requests ----------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    """`stream_options`: a last chunk with the usage (choices []) only when include_usage."""

    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields common to completions and chat: the SamplingParams they map to, with its ranges."""

    model_config = ConfigDict(extra="ignore")

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
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Accepted only at their no-op values (refused by name otherwise).
    logit_bias: dict | None = None
    best_of: int | None = None
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop):
        if stop is not None and (stop == "" or (isinstance(stop, list) and "" in stop)):
            raise ValueError("stop strings must not be empty")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        return _refuse("logit_bias", value)

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value):
        return _refuse("best_of > 1", value, (None, 1))

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value):
        if value is not None and value.get("type") not in (None, "text"):
            raise ValueError("response_format other than {\"type\": \"text\"} is not supported "
                             "by this server")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options can only be given when stream is true")
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int | None, logprobs: int | None) -> dict:
        """The `sampling_parameters` JSON object for Triton (SamplingParams names)."""
        out: dict[str, Any] = {"n": self.n, "max_tokens": max_tokens}
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                     "presence_penalty", "frequency_penalty", "seed", "stop", "stop_token_ids"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.ignore_eos:
            out["ignore_eos"] = True
        if self.min_tokens:
            out["min_tokens"] = self.min_tokens
        if logprobs is not None:
            out["logprobs"] = logprobs
        return out


class CompletionRequest(_SamplingRequest):
    """POST /v1/completions. One prompt: a string, a list of one string, or token ids."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt):
        if isinstance(prompt, list):
            if prompt and isinstance(prompt[0], (str, list)):
                if len(prompt) != 1:
                    raise ValueError(f"give one prompt per request, got a list of {len(prompt)}")
                prompt = prompt[0]
            if isinstance(prompt, list) and not prompt:
                raise ValueError("the prompt is empty")
            if isinstance(prompt, list) and any(t < 0 for t in prompt):
                raise ValueError("token ids must be >= 0")
        if prompt == "":
            raise ValueError("the prompt is empty")
        return prompt

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
    tools: list | None = None
    tool_choice: Any = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, value):
        return _refuse("tools", value)

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value):
        return _refuse("tool_choice", value, (None, "none"))

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

"""OpenAI's error envelope, and Triton's error messages mapped onto it.

Every error this service answers has one shape, `{"error": {"message", "type", "param",
"code"}}` (OpenAI's, and vLLM's since 0.10.1), with the HTTP status to match: 400 bad input
(`param` names the field), 404 unknown model, 413 body too large, 429 overloaded or too many
requests from one client, 503 not ready, 504 timed out, 500 anything unexpected (its message
only: never a stack trace).

Triton's gRPC stream carries an error's message but not its code, so `from_triton` reads the
message: the engine's and the `llm` adapter's messages are written to name the input or field at
fault, and their few non-input failures are recognisable (overloaded, shutting down, the engine
process gone).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          403: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "internal_error",
          503: "service_unavailable_error", 504: "timeout_error"}


@dataclass
class OpenAIError(Exception):
    """An error to answer in OpenAI's shape (raised anywhere, answered by app.py's handler)."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        # (imported here: schemas imports the request models, which raise these errors)
        from pagedllm_openai.schemas import ErrorInfo, ErrorResponse
        info = ErrorInfo(message=self.message, type=_TYPES.get(self.status, "error"),
                         param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()


def bad_request(message: str, param: str | None) -> OpenAIError:
    return OpenAIError(400, message, param, None)


# ---- Triton's messages ---------------------------------------------------------------------

# Failures that are not the request's fault: retrying later (or elsewhere) may work.
_UNAVAILABLE = ("server shutting down", "the engine process", "is not ready",
                "unknown model", "unavailable", "failed to connect", "socket closed")
_INTERNAL = ("engine step failed",)
# SamplingParams fields a message may name, as "<field> must ..." or "<field> is ...".
_FIELDS = ("max_tokens", "min_tokens", "n", "temperature", "top_p", "top_k", "min_p",
           "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop",
           "stop_token_ids", "ignore_eos", "logprobs", "skip_special_tokens", "logit_bias",
           "allowed_token_ids", "bad_words", "include_stop_str_in_output")
_FIELD_RE = re.compile(r"\b(" + "|".join(_FIELDS) + r")\b (?:must|is)\b")
_UNKNOWN_RE = re.compile(r"unknown sampling parameter '(\w+)'")
# The engine names a structured-output constraint it cannot compile "structured_outputs.<kind>".
_STRUCTURED_RE = re.compile(r"\bstructured_outputs(\.\w+)?")
_INPUT_RE = re.compile(r"input '(\w+)'")
# Triton prefixes the errors of an ensemble's steps with this; the rest is the step's message.
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")
_PROMPT_INPUTS = ("text_input", "input_ids", "input_lengths", "text_has_nul")


def from_triton(message: str, prompt_param: str = "prompt",
                renames: dict[str, str] | None = None) -> OpenAIError:
    """The OpenAI error for one of Triton's error messages.

    Args:
        message: the error message of a Triton response.
        prompt_param: what the prompt is called in this API ("prompt" or "messages").
        renames: SamplingParams names -> this API's names (chat: logprobs -> top_logprobs).
    """
    text = _ENSEMBLE_PREFIX.sub("", message.strip())
    lower = text.lower()
    if lower.startswith("overloaded") or ": overloaded" in lower:
        return OpenAIError(429, text, None, "overloaded")
    if any(s in lower for s in _INTERNAL):
        return OpenAIError(500, text, None, "internal_error")
    if any(s in lower for s in _UNAVAILABLE):
        return OpenAIError(503, text, None, "unavailable")
    return bad_request(text, _guess_param(text, prompt_param, renames or {}))


def _guess_param(text: str, prompt_param: str, renames: dict[str, str]) -> str | None:
    """The request field a message is about, where it names one."""
    structured = _STRUCTURED_RE.search(text)
    if structured:
        name = structured.group(0)
        return renames.get(name, renames.get("structured_outputs", name))
    unknown = _UNKNOWN_RE.search(text)
    if unknown:
        return renames.get(unknown.group(1), unknown.group(1))
    field = _FIELD_RE.search(text)
    if field:
        return renames.get(field.group(1), field.group(1))
    name = _INPUT_RE.search(text)
    if name:
        if name.group(1) in _PROMPT_INPUTS:
            return prompt_param
        if name.group(1) == "max_tokens":
            return "max_tokens"
    if "prompt" in text.lower():
        return prompt_param
    return None

"""What the engine hands back: per-step deltas for streaming, and vLLM-shaped final outputs."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class StreamDelta:
    """A request's progress in one step; concatenating every delta's text gives the final text.

    Attributes:
        request_id: the request.
        token_ids: tokens generated this step (empty for a step that only held text back).
        text: text that became final this step (may be empty: an incomplete UTF-8 character or a
            possible stop-string prefix is held back until it is decided).
        finished: True on the request's last delta, exactly once.
        finish_reason: "stop", "length" or "abort" when finished.
        logprobs: per new token, {token_id: logprob} when requested.
        num_prompt_tokens / num_output_tokens: running counts, for metrics.
        error: set when the request failed inside the engine (it is then finished).
    """

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None


@dataclass
class CompletionOutput:
    """One generated sequence (vLLM's names)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    """A request's outputs (vLLM's names)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0

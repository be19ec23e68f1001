"""What the engine hands back: per-step deltas for streaming, and vLLM-shaped final outputs."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class StreamDelta:
    """A request's progress in one step; concatenating every delta's text gives the final text.

    Built by keyword only. Crossing a process boundary it travels as a tuple (`to_wire` /
    `from_wire`): pickling the dataclass itself cost the engine thread 6x more per step.

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


# The wire format of a StreamDelta: a tuple in this order. NOTE: EngineProcess's child sends this
# tuple in its handshake and the parent refuses a child whose order differs from its own.
WIRE_FIELDS = ("request_id", "token_ids", "text", "finished", "finish_reason", "logprobs",
               "num_prompt_tokens", "num_output_tokens", "error")


def to_wire(d: StreamDelta) -> tuple:
    """The delta as a plain tuple in WIRE_FIELDS order (cheap to pickle)."""
    return (d.request_id, d.token_ids, d.text, d.finished, d.finish_reason, d.logprobs,
            d.num_prompt_tokens, d.num_output_tokens, d.error)


def from_wire(row: tuple) -> StreamDelta:
    """The StreamDelta of a `to_wire` tuple."""
    return StreamDelta(request_id=row[0], token_ids=row[1], text=row[2], finished=row[3],
                       finish_reason=row[4], logprobs=row[5], num_prompt_tokens=row[6],
                       num_output_tokens=row[7], error=row[8])


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


def coalesce(deltas: list[StreamDelta]) -> list[StreamDelta]:
    """One delta per request, in first-seen order: token ids, text and logprobs joined.

    A server that falls behind the engine sends one response per request for everything that
    piled up, rather than one per step: fewer, larger responses, the same concatenated text.
    The deltas are merged in place (the first of each request absorbs the later ones).
    """
    merged: dict[str, StreamDelta] = {}
    for d in deltas:
        m = merged.get(d.request_id)
        if m is None:
            merged[d.request_id] = d
            continue
        m.token_ids = m.token_ids + d.token_ids
        m.text += d.text
        if d.logprobs is not None:
            m.logprobs = (m.logprobs or []) + d.logprobs
        m.finished, m.finish_reason, m.error = d.finished, d.finish_reason, d.error
        m.num_prompt_tokens, m.num_output_tokens = d.num_prompt_tokens, d.num_output_tokens
    return list(merged.values())

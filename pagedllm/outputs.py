"""What the engine hands back: per-step deltas for streaming, and vLLM-shaped final outputs."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(slots=True)
class StreamDelta:
    """A request's progress in one step; concatenating every delta's text gives the final text.

    Build it by keyword. NOTE: two hot paths pass the fields by position, in WIRE_FIELDS order,
    which is the field order (checked below, and by tests/test_coalesce.py): the engine's
    per-token delta and `from_wire`; keyword construction of every delta of a step slowed the CPU
    benchmark's engine step measurably (docs/benchmarks.md). Crossing a process boundary a delta
    travels as a tuple (`to_wire` / `from_wire`): pickling the dataclass itself cost the engine
    thread several times more per step (docs/serving-benchmarks.md).

    Attributes:
        request_id: the request.
        index: which of the request's n sequences (SamplingParams.n) the delta belongs to.
        token_ids: tokens generated this step (empty for a step that only held text back).
        text: text that became final this step (may be empty: an incomplete UTF-8 character or a
            possible stop-string prefix is held back until it is decided).
        finished: True on the request's last delta, exactly once (with n > 1: when the last of its
            sequences ends).
        finish_reason: "stop", "length" or "abort" on each sequence's last delta, else None.
        logprobs: per new token, {token_id: logprob} when requested.
        num_prompt_tokens / num_output_tokens: running counts, for metrics.
        error: set when the request failed inside the engine (it is then finished).
        error_code: what kind of failure: "invalid_argument" (the request's own fault),
            "unavailable" (overloaded, or the engine is gone: retry later) or "internal".
    """

    request_id: str
    index: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None
    error_code: str | None = None


# The wire format of a StreamDelta: a tuple in this order. NOTE: EngineProcess's child sends this
# tuple in its handshake and the parent refuses a child whose order differs from its own.
WIRE_FIELDS = ("request_id", "index", "token_ids", "text", "finished", "finish_reason",
               "logprobs", "num_prompt_tokens", "num_output_tokens", "error", "error_code")
if WIRE_FIELDS != tuple(f.name for f in fields(StreamDelta)):
    raise ImportError("WIRE_FIELDS must list StreamDelta's fields in their order")


def to_wire(d: StreamDelta) -> tuple:
    """The delta as a plain tuple in WIRE_FIELDS order (cheap to pickle)."""
    return (d.request_id, d.index, d.token_ids, d.text, d.finished, d.finish_reason, d.logprobs,
            d.num_prompt_tokens, d.num_output_tokens, d.error, d.error_code)


def from_wire(row: tuple) -> StreamDelta:
    """The StreamDelta of a `to_wire` tuple."""
    return StreamDelta(*row)  # WIRE_FIELDS order is the field order


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
    """One delta per sequence, in first-seen order: token ids, text and logprobs joined.

    A server that falls behind the engine sends one response per request for everything that
    piled up, rather than one per step: fewer, larger responses, the same concatenated text.
    The deltas are merged in place (the first of each sequence absorbs the later ones).
    """
    merged: dict[tuple[str, int], StreamDelta] = {}
    for d in deltas:
        m = merged.get((d.request_id, d.index))
        if m is None:
            merged[(d.request_id, d.index)] = d
            continue
        m.token_ids = m.token_ids + d.token_ids
        m.text += d.text
        if d.logprobs is not None:
            m.logprobs = (m.logprobs or []) + d.logprobs
        m.finished, m.finish_reason, m.error, m.error_code = (d.finished, d.finish_reason, d.error,
                                                              d.error_code)
        m.num_prompt_tokens, m.num_output_tokens = d.num_prompt_tokens, d.num_output_tokens
    return list(merged.values())

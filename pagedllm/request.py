"""Per-request state as the scheduler and KV-cache manager see it."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    """Where a request is in its life. Preempted requests wait again, at the front."""

    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_ABORTED)


@dataclass(slots=True, eq=False)
class Request:
    """One generation request.

    There is no "prefill" or "decode" phase: `num_computed_tokens` (tokens whose K/V sit in the cache)
    catches up with `num_tokens` (prompt + generated). A step that brings it to `num_tokens` samples the
    next token. The same rule covers chunked prefill, prefix-cache hits and recompute after preemption.

    Attributes:
        request_id: caller's id, unique among live requests.
        prompt_token_ids: the prompt.
        sampling_params: how to sample and when to stop.
        max_tokens: the effective output limit (sampling_params.max_tokens capped by max_model_len).
        eos_token_ids: the model's end-of-sequence ids.
        all_token_ids: prompt followed by every generated token (the K/V source of truth).
        num_computed_tokens: leading tokens of all_token_ids whose K/V are in the cache.
        block_hashes: chained hashes of this request's full blocks, computed once, kept across preemption.
        num_cached_tokens: prompt tokens served from the prefix cache at admission (for stats).
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int
    eos_token_ids: tuple[int, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_hashes: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    num_cached_tokens: int = 0
    stop_reason: int | str | None = None
    # Filled by the engine's output processing, opaque to the scheduler.
    generator: Any = None
    sampling_row: Any = None
    sampling_row_varies: bool = False
    stop_ids: frozenset = frozenset()
    detok: Any = None
    text: str = ""
    num_text_sent: int = 0
    stop_holdback: int = 0
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float = 0.0
    first_token_time: float | None = None

    num_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids):]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.is_finished else None

    def append_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)

"""Per-request state as the scheduler and KV-cache manager see it."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagedllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # NOTE: types only: the scheduler and its tests import this without torch
    import torch

    from pagedllm.detokenizer import DetokState
    from pagedllm.sampler import SamplingRow
    from pagedllm.structured_outputs import Matcher


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
class OutputState:
    """What the engine's output processing keeps per request; the scheduler never reads it.

    Built by LLMEngine.add_request with the request, never filled in afterwards.

    Attributes:
        group_id: the caller's request id (n > 1 sequences share it).
        index: which of the request's n sequences this is.
        sampling_row: what the sampler needs about the request (updated in place when
            `row_varies`: penalties and min_tokens look at the tokens generated so far).
        row_varies: whether sampling_row changes from step to step.
        detok: where the request's incremental detokenization stands.
        stop_ids: token ids that may stop it (a fast membership test before stop_checker).
        stop_holdback: characters held back at the end of the text while a stop string may
            still begin there.
        generator: the request's own generator when its params have a seed.
        text: the output text so far (stop strings cut off).
        num_text_sent: how much of `text` the deltas have carried.
        logprobs: per output token, {token_id: logprob}, when the params ask for them.
        cumulative_logprob: the sum of the sampled tokens' logprobs.
        matcher: where the sequence is in its grammar (structured outputs), else None. It has
            accepted every token in all_token_ids past the prompt: preemption keeps the tokens,
            so it keeps the matcher too.
        bad_words_ids: the token sequences of the params' bad_words (each word with and without
            a leading space); the last token of one is forbidden where the output ends with the
            rest.
    """

    group_id: str
    index: int
    sampling_row: SamplingRow
    row_varies: bool
    detok: DetokState
    stop_ids: frozenset[int]
    stop_holdback: int
    generator: torch.Generator | None = None
    text: str = ""
    num_text_sent: int = 0
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float = 0.0
    matcher: Matcher | None = None
    bad_words_ids: tuple[tuple[int, ...], ...] = ()


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
        state: the engine's output processing state (None for requests only the scheduler sees).
        all_token_ids: prompt followed by every generated token (the K/V source of truth).
        num_computed_tokens: leading tokens of all_token_ids whose K/V are in the cache (with async
            scheduling it can count one sampled token that is not in all_token_ids yet).
        num_pending: tokens sampled by launched steps that all_token_ids does not hold yet and that
            the request will compute next (async scheduling; 0 or 1 when the scheduler runs). A
            request's last token never counts here: nothing follows it.
        sample_row: the request's row in the last launched step's sampled tokens (where a pending
            token is read from on the device).
        block_hashes: chained hashes of this request's full blocks, computed once, kept across preemption.
        num_cached_tokens: prompt tokens served from the prefix cache at admission (for stats).
        stop_reason: the stop token id or stop string that finished it, if one did.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int
    eos_token_ids: tuple[int, ...] = ()
    state: OutputState | None = None
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_hashes: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    num_cached_tokens: int = 0
    stop_reason: int | str | None = None
    num_prompt_tokens: int = 0
    num_pending: int = 0
    sample_row: int = -1

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

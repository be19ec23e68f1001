"""Continuous batching: every step spends one token budget, running requests first, then waiting ones.

There are no prefill and decode phases. Each scheduled request gets
`min(num_tokens - num_computed_tokens, budget left)` tokens this step: a new prompt takes as much of the
budget as it can (a chunk when the budget is short), a running request takes its one new token. When
the KV cache cannot hold a running request's next tokens, the newest running request is preempted:
its blocks are freed and it waits again at the front of the queue, to be recomputed later (its full
blocks are likely still in the prefix cache, which makes the recompute cheap).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagedllm.kv_cache_manager import KVCacheManager
from pagedllm.request import Request, RequestStatus

if TYPE_CHECKING:  # NOTE: types only: the scheduler and its tests run without torch
    from pagedllm.sampler import SamplingRow


@dataclass(slots=True)
class SchedulerOutput:
    """One step, whole, from the scheduler to the runner (vLLM's name).

    The scheduler chooses the batch and lists what the runner reads of it, as it stood before the
    step ran; the runner builds the model's inputs from these lists alone (input_buffers.py).

    Attributes:
        requests: the scheduled requests, in batch order.
        num_tokens: tokens to compute for each, parallel to `requests`.
        total_tokens: sum of num_tokens (at most the step's budget).
        preempted: requests preempted while scheduling this step.
        token_ids: each request's tokens (its live `all_token_ids`; a pending row's list stops
            one token short of its input).
        num_computed: tokens already in the cache, per request.
        block_tables: KV block ids, per request (the KV-cache manager's live lists).
        sample: whether the request's chunk reaches its last token, so it samples, per request.
        sampling: the requests that sample, in row order (the order of the sampled tokens).
        rows: one SamplingRow per request in `sampling` (the engine sets them:
            `pagedllm.sampler.sampling_rows`).
        pending_rows: with async scheduling, the one-token rows whose input was sampled by the
            previous launch and is not known to the host yet: the runner reads it on the device.
        pending_sources: where, in the previous launch's sampled tokens, per pending row.
    """

    requests: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    total_tokens: int = 0
    preempted: list[Request] = field(default_factory=list)
    # (empty tuples until filled: one step's worth of fresh lists is not free on the hot path)
    token_ids: Sequence[list[int]] = ()
    num_computed: Sequence[int] = ()
    block_tables: Sequence[list[int]] = ()
    sample: Sequence[bool] = ()
    sampling: Sequence[Request] = ()
    rows: Sequence[SamplingRow] = ()
    pending_rows: Sequence[int] = ()
    pending_sources: Sequence[int] = ()

    @property
    def is_empty(self) -> bool:
        return not self.requests


@dataclass
class SchedulerStats:
    """Counters since start (for tests, benchmarks and metrics)."""

    num_preemptions: int = 0
    num_partial_prefills: int = 0
    num_steps: int = 0


class Scheduler:
    """Admits, runs, preempts and retires requests at every step.

    With `async_scheduling` the engine launches step N+1 before it reads step N's tokens back.
    The bookkeeping that makes that correct is here alone: a request whose sampled token is still
    in flight counts it in `num_pending`, which the budget treats as the next token to compute; the
    step lists such rows (`pending_rows`) for the runner to read on the device; a request that
    finished while its step ran drops that step's token (`update_from_output`).
    """

    def __init__(self, kv_cache: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 async_scheduling: bool = False) -> None:
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.async_scheduling = async_scheduling
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        """Choose this step's requests and token counts, allocating their KV slots."""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        allocate = self.kv_cache.allocate_slots
        # NOTE: the hot loop (once per running request per step): kept flat on purpose.
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            remaining = len(request.all_token_ids) + request.num_pending - request.num_computed_tokens
            if remaining <= 0:  # its last token is still being sampled (async scheduling)
                i += 1
                continue
            n = remaining if remaining < budget else budget
            if not allocate(request, n) and not self._preempt_until_fits(request, n, out):
                break  # the request preempted itself: it was the newest, nothing follows it
            if n < remaining:
                self.stats.num_partial_prefills += 1
            out.requests.append(request)
            out.num_tokens.append(n)
            budget -= n
            i += 1
        # NOTE: no admissions in a step that preempted: memory is short, admitting would thrash.
        while (self.waiting and budget > 0 and not out.preempted
               and len(self.running) < self.max_num_seqs):
            request = self.waiting[0]
            if request.num_pending:  # preempted while its token was in flight: not known yet
                break
            hits = self.kv_cache.get_computed_blocks(request)
            num_cached = len(hits) * self.kv_cache.block_size
            n = min(request.num_tokens - num_cached, budget)
            if not self.kv_cache.allocate_slots(request, n, hits):
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_cached
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            if num_cached + n < request.num_tokens:
                self.stats.num_partial_prefills += 1
            out.requests.append(request)
            out.num_tokens.append(n)
            budget -= n
        out.total_tokens = self.max_num_batched_tokens - budget
        self.stats.num_steps += 1
        if out.requests:
            self._list_inputs(out)
        return out

    def _list_inputs(self, out: SchedulerOutput) -> None:
        """Fill the step's per-request lists that the runner reads.

        NOTE: once per step over every scheduled request: comprehensions, not appends in the
        loops above (cheaper per step: docs/benchmarks.md).
        """
        reqs = out.requests
        out.token_ids = token_ids = [r.all_token_ids for r in reqs]
        out.num_computed = num_computed = [r.num_computed_tokens for r in reqs]
        block_ids = self.kv_cache.block_ids
        out.block_tables = [block_ids(r.request_id) for r in reqs]
        if self.async_scheduling:
            # a row whose next input is not in its list yet: its token is pending
            known = [len(t) for t in token_ids]
            late = [i for i, (c, k) in enumerate(zip(num_computed, known)) if c >= k]
            if late:
                out.pending_rows = late
                out.pending_sources = [reqs[i].sample_row for i in late]
            sample = [c + n >= k for c, n, k in zip(num_computed, out.num_tokens, known)]
        else:
            sample = [c + n == len(t) for c, n, t in zip(num_computed, out.num_tokens, token_ids)]
        out.sample = sample
        out.sampling = reqs if all(sample) else [r for r, s in zip(reqs, sample) if s]

    def update_after_step(self, out: SchedulerOutput) -> None:
        """Record that the step was launched: its tokens' K/V are in the cache (or will be, in
        stream order), and with async scheduling each sampling request's coming token is pending."""
        for request, n in zip(out.requests, out.num_tokens):
            request.num_computed_tokens += n
        if self.async_scheduling:
            for j, r in enumerate(out.sampling):
                r.sample_row = j
                # the coming token is the request's last when it reaches max_tokens: nothing
                # follows it, so it is not pending (the request is not scheduled again)
                if len(r.all_token_ids) + r.num_pending + 1 - r.num_prompt_tokens < r.max_tokens:
                    r.num_pending += 1

    def update_from_output(self, requests: list[Request], token_ids: list[int],
                           logprobs: list) -> tuple[list[Request], list[int], list]:
        """Append each sampling request's new token (`requests` in row order, as launched).

        Returns (requests, token_ids, logprobs) less the requests that finished (or were aborted)
        since their step was launched: their token is dropped (async scheduling).
        """
        if self.async_scheduling and any(r.status.is_finished for r in requests):
            kept = [i for i, r in enumerate(requests) if not r.status.is_finished]
            requests = [requests[i] for i in kept]
            token_ids = [token_ids[i] for i in kept]
            logprobs = [logprobs[i] for i in kept]
        for r, token in zip(requests, token_ids):
            r.all_token_ids.append(token)
            if r.num_pending:  # (async scheduling: this token is no longer pending)
                r.num_pending -= 1
        return requests, token_ids, logprobs

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Retire a request in any state, freeing its blocks. Finishing twice is a no-op."""
        if request.is_finished:
            return
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        self.kv_cache.free(request)

    def _preempt_until_fits(self, request: Request, n: int, out: SchedulerOutput) -> bool:
        """Preempt the newest running requests until `request` gets its slots; False if it was
        preempted itself."""
        while not self.kv_cache.allocate_slots(request, n):
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(request)

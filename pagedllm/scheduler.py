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
from dataclasses import dataclass, field

from pagedllm.kv_cache_manager import KVCacheManager
from pagedllm.request import Request, RequestStatus


@dataclass
class SchedulerOutput:
    """What to run this step.

    Attributes:
        requests: the scheduled requests, in batch order.
        num_tokens: tokens to compute for each, parallel to `requests`.
        total_tokens: sum of num_tokens (at most the step's budget).
        preempted: requests preempted while scheduling this step.
    """

    requests: list[Request] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    total_tokens: int = 0
    preempted: list[Request] = field(default_factory=list)

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
    """Admits, runs, preempts and retires requests at every step."""

    def __init__(self, kv_cache: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
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
        return out

    def update_after_step(self, out: SchedulerOutput) -> None:
        """Record that the scheduled tokens' K/V are now in the cache."""
        for request, n in zip(out.requests, out.num_tokens):
            request.num_computed_tokens += n

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

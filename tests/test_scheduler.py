"""Scheduler: one token budget per step, running first, chunked prefill, preemption, abort."""
from __future__ import annotations

from pagedllm.kv_cache_manager import KVCacheManager
from pagedllm.request import Request, RequestStatus
from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler import Scheduler

from kv_invariants import check_kv_invariants


def req(rid: str, n: int, base: int = 0) -> Request:
    return Request(request_id=rid, prompt_token_ids=[base + i for i in range(n)],
                   sampling_params=SamplingParams(), max_tokens=100)


def run_step(s: Scheduler):
    """Schedule, pretend the model ran, and append a token to every request that completed."""
    out = s.schedule()
    s.update_after_step(out)
    for r in out.requests:
        if r.num_computed_tokens == r.num_tokens:
            r.append_token(1)
    check_kv_invariants(s.kv_cache)
    return out


def test_prompts_share_the_budget_in_arrival_order():
    s = Scheduler(KVCacheManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a, b, c = req("a", 6), req("b", 6, 100), req("c", 3, 200)
    for r in (a, b, c):
        s.add_request(r)
    out = run_step(s)
    assert [r.request_id for r in out.requests] == ["a", "b"]
    assert out.num_tokens == [6, 4], "b gets a chunk of what is left of the budget"
    assert s.stats.num_partial_prefills == 1
    out = run_step(s)
    # Running first: a decodes (1), b finishes its prompt (2), then c is admitted (3).
    assert [(r.request_id, n) for r, n in zip(out.requests, out.num_tokens)] == [("a", 1), ("b", 2), ("c", 3)]
    assert out.total_tokens == 6


def test_max_num_seqs_caps_running():
    s = Scheduler(KVCacheManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        s.add_request(req(str(i), 3, 10 * i))
    out = run_step(s)
    assert len(out.requests) == 2 and len(s.waiting) == 1


def test_preempts_newest_when_blocks_run_out_and_recomputes():
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_caching=False)
    s = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = req("old", 4), req("new", 4, 100)
    s.add_request(old)
    s.add_request(new)
    run_step(s)  # 2 blocks used, each request has 5 tokens now
    run_step(s)  # both grow into a second block: 4 blocks used
    assert kv.num_free_blocks == 0
    for _ in range(3):
        run_step(s)
    out = run_step(s)  # old needs a 3rd block -> new (newest) is preempted
    assert new in out.preempted and new.status == RequestStatus.PREEMPTED
    assert new.num_computed_tokens == 0 and s.waiting[0] is new
    assert s.stats.num_preemptions == 1
    s.finish(old, RequestStatus.FINISHED_STOPPED)
    num_tokens = new.num_tokens  # prompt + the outputs it had made
    out = run_step(s)
    assert out.requests == [new] and out.num_tokens == [num_tokens]
    assert new.status == RequestStatus.RUNNING
    assert new.num_computed_tokens == new.num_tokens - 1, "recompute covers prompt and outputs"
    s.finish(new, RequestStatus.FINISHED_LENGTH)
    assert kv.num_free_blocks == 4


def test_request_preempts_itself_when_alone_with_others_older():
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_caching=False)
    s = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=100)
    a = req("a", 4)
    b = req("b", 3, 50)
    s.add_request(a)
    s.add_request(b)
    run_step(s)  # a: 1 block, b: 1 block
    out = run_step(s)  # a needs block 2 -> preempt b
    assert out.preempted == [b] and out.requests == [a]


def test_abort_in_every_state_frees_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    s = Scheduler(kv, max_num_seqs=1, max_num_batched_tokens=100)
    running, waiting = req("r", 6), req("w", 6, 100)
    s.add_request(running)
    s.add_request(waiting)
    run_step(s)
    assert running.status == RequestStatus.RUNNING and waiting.status == RequestStatus.WAITING
    s.finish(waiting, RequestStatus.FINISHED_ABORTED)
    s.finish(running, RequestStatus.FINISHED_ABORTED)
    s.finish(running, RequestStatus.FINISHED_ABORTED)  # twice is a no-op
    assert kv.num_free_blocks == 8 and not s.waiting
    assert run_step(s).is_empty
    assert s.running == []

"""Block accounting under random traffic: arrivals, aborts, preemptions and finishes.

The engine runs with a model runner that does no math (NullRunner) and a small KV cache, so
preemption and prefix-cache eviction happen often. The invariants are checked after every operation,
and once everything has finished every block must be free.
"""
from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedllm.config import EngineConfig
from pagedllm.engine import LLMEngine
from pagedllm.null_runner import NullRunner
from pagedllm.sampling_params import SamplingParams

from kv_invariants import check_kv_invariants

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "default")
BLOCK = 4

prompt = st.tuples(st.integers(0, 2), st.integers(1, 40))  # (which shared prefix, length)
op = st.one_of(
    st.tuples(st.just("add"), prompt, st.integers(1, 24)),
    st.tuples(st.just("abort"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 4)),
)


def make_engine(num_blocks: int, budget: int, async_scheduling: bool = False) -> LLMEngine:
    config = EngineConfig(model=MODEL, block_size=BLOCK, num_kv_blocks=num_blocks,
                          max_num_batched_tokens=budget, max_num_seqs=6,
                          async_scheduling=async_scheduling)
    return LLMEngine(config, runner=NullRunner(num_blocks, vocab_size=4096))


def check(engine: LLMEngine) -> None:
    check_kv_invariants(engine.kv_cache)
    live = {r.request_id for r in engine.scheduler.running if not r.is_finished}
    for rid, table in engine.kv_cache.req_to_blocks.items():
        request = engine.requests[rid]
        assert not request.is_finished, f"finished request {rid} still holds blocks"
        assert rid in live, f"request {rid} holds blocks but is not running"
        assert len(table) * BLOCK >= request.num_computed_tokens


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=60), num_blocks=st.integers(12, 40), budget=st.integers(8, 64),
       async_scheduling=st.booleans())
def test_invariants_hold_at_every_step(ops, num_blocks, budget, async_scheduling):
    engine = make_engine(num_blocks, budget, async_scheduling)
    ids: list[str] = []
    finished: set[str] = set()
    for o in ops:
        if o[0] == "add":
            (prefix, length), max_tokens = o[1], o[2]
            tokens = [(prefix * 1000 + i) % 4096 for i in range(length)]
            rid = str(len(ids))
            n = 1 + prefix % 3  # some requests ask for 2 or 3 completions: 2-3 sequences
            engine.add_request(rid, tokens, SamplingParams(n=n, max_tokens=max_tokens, ignore_eos=True))
            ids.append(rid)
        elif o[0] == "abort" and ids:
            rid = ids[o[1] % len(ids)]
            deltas = engine.abort_request(rid)
            if deltas:
                assert [d.finished for d in deltas] == [False] * (len(deltas) - 1) + [True]
                assert all(d.finish_reason == "abort" for d in deltas)
                assert rid not in finished, "two final deltas for one request"
                finished.add(rid)
        else:
            for _ in range(o[1]):
                for d in engine.step():
                    if d.finished:
                        assert d.request_id not in finished, "two final deltas for one request"
                        finished.add(d.request_id)
                check(engine)
        check(engine)
    while engine.has_unfinished_requests():
        for d in engine.step():
            if d.finished:
                assert d.request_id not in finished
                finished.add(d.request_id)
        check(engine)
    assert finished == set(ids), "every request ends with exactly one final delta"
    assert engine.kv_cache.num_free_blocks == num_blocks
    assert engine.kv_cache.usage == 0.0

"""Async scheduling (EngineConfig.async_scheduling): step N+1 is launched before step N's tokens are
read back, its pending input tokens patched in on the device.

What must hold: every request gets the same tokens, text and finish reason as with synchronous
scheduling; a request that stops (or is aborted) while a step of it runs drops that step's token;
blocks are never leaked; and the streamed deltas still add up to the final text.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.engine import LLMEngine
from pagedllm.null_runner import NullRunner

from kv_invariants import check_kv_invariants

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "default")
VOCAB = 64  # small, so NullRunner's tokens hit the stop token ids often
DEVICE = os.environ.get("PAGEDLLM_TEST_DEVICE", "cpu")  # cuda: the device path, CUDA graphs on


def null_engine(async_scheduling: bool, num_blocks: int, budget: int) -> LLMEngine:
    config = EngineConfig(model=MODEL, block_size=4, num_kv_blocks=num_blocks, max_num_seqs=5,
                          max_num_batched_tokens=budget, async_scheduling=async_scheduling)
    return LLMEngine(config, runner=NullRunner(num_blocks, vocab_size=VOCAB))


def run_all(engine: LLMEngine, requests) -> dict:
    """Add every request, step to the end; {id: (tokens, finish reasons, texts, streamed texts)}."""
    streamed: dict[str, list[str]] = {}
    finals: set[str] = set()
    for rid, prompt, params in requests:
        engine.add_request(rid, prompt, params)
        streamed[rid] = [""] * params.n
    steps = 0
    while engine.has_unfinished_requests():
        for d in engine.step():
            assert d.request_id not in finals, "a delta after the final one"
            streamed[d.request_id][d.index] += d.text
            if d.finished:
                finals.add(d.request_id)
        check_kv_invariants(engine.kv_cache)
        steps += 1
        assert steps < 10_000
    assert finals == set(streamed)
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    out = {}
    for rid in streamed:
        o = engine.get_output(rid)
        out[rid] = ([c.token_ids for c in o.outputs], [c.finish_reason for c in o.outputs],
                    [c.text for c in o.outputs], streamed[rid])
        engine.release(rid)
    return out


request = st.tuples(st.integers(0, 2), st.integers(1, 30), st.integers(1, 20), st.integers(1, 2),
                    st.booleans())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(request, min_size=1, max_size=12), num_blocks=st.integers(14, 40),
       budget=st.integers(4, 40))
def test_async_gives_the_synchronous_tokens_under_preemption_prefix_hits_and_stops(
        reqs, num_blocks, budget):
    """NullRunner samples from each request's tokens, so a wrong pending input changes every
    later token; a small cache forces preemption, shared prefixes hit the cache, chunked prefill
    comes from the small budget, and stop ids (a tenth of the vocabulary) stop requests early."""
    work = []
    for i, (prefix, length, max_tokens, n, stops) in enumerate(reqs):
        prompt = [(prefix * 7 + j) % VOCAB for j in range(length)]
        params = SamplingParams(max_tokens=max_tokens, n=n, ignore_eos=True,
                                stop_token_ids=list(range(0, VOCAB, 10)) if stops else None)
        work.append((str(i), prompt, params))
    sync = run_all(null_engine(False, num_blocks, budget), work)
    async_ = run_all(null_engine(True, num_blocks, budget), work)
    assert async_ == sync


def test_an_aborted_request_in_flight_frees_its_blocks_and_gets_one_final_delta():
    engine = null_engine(True, num_blocks=64, budget=64)
    engine.add_request("a", list(range(1, 10)), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.add_request("b", list(range(2, 12)), SamplingParams(max_tokens=20, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine._in_flight is not None and engine.requests["a"] in engine._in_flight.requests
    final = engine.abort_request("a")
    assert [(d.finished, d.finish_reason) for d in final] == [(True, "abort")]
    after = []
    while engine.has_unfinished_requests():
        after += engine.step()
    assert all(d.request_id == "b" for d in after), "the aborted request's token was emitted"
    assert engine.get_output("b").outputs[0].finish_reason == "length"
    assert len(engine.get_output("b").outputs[0].token_ids) == 20
    assert engine.kv_cache.num_free_blocks == 64


@pytest.fixture(scope="module")
def pair(tiny_checkpoints):
    kw = dict(num_kv_blocks=256, max_model_len=256, max_num_batched_tokens=64, device=DEVICE,
              dtype="float32")
    return (LLM(tiny_checkpoints["llama"], async_scheduling=False, **kw),
            LLM(tiny_checkpoints["llama"], async_scheduling=True, **kw))


def generate(llm: LLM, params: list[SamplingParams]):
    prompts = [{"prompt_token_ids": [(7 * i + 3 * j) % 4000 + 3 for j in range(5 + 9 * i)]}
               for i in range(len(params))]
    return [[(c.token_ids, c.text, c.finish_reason, c.logprobs) for c in o.outputs]
            for o in llm.generate(prompts, params)]


def test_the_real_model_samples_the_same_tokens_with_either_scheduling(pair):
    """Greedy, stop strings, stop ids found on the way, n = 2 with seeds, temperature, logprobs,
    and penalties (whose rows read the previous token: the engine reads it back first)."""
    sync, async_ = pair
    greedy = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True) for _ in range(6)]
    first = generate(sync, greedy)
    stop_id = first[2][0][0][5]
    stop_text = first[3][0][1][4:6]
    params = greedy + [
        SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id]),
        SamplingParams(temperature=0, max_tokens=24, stop=[stop_text]),
        SamplingParams(temperature=0.9, top_p=0.9, max_tokens=16, n=2, seed=11),
        SamplingParams(temperature=0, max_tokens=12, logprobs=3),
        SamplingParams(temperature=0, max_tokens=12, repetition_penalty=1.3, min_tokens=4),
    ]
    got, want = generate(async_, params), generate(sync, params)
    # NOTE: logprobs compare within float rounding: on a GPU a step's batch (so the GEMM's
    # reduction order) differs between the schedulings, and the values move in their last bits.
    strip = [[(ids, text, reason) for ids, text, reason, _ in seqs] for seqs in got]
    assert strip == [[(ids, text, reason) for ids, text, reason, _ in seqs] for seqs in want]
    for seqs_got, seqs_want in zip(got, want):
        for (*_, lp_got), (*_, lp_want) in zip(seqs_got, seqs_want):
            assert (lp_got is None) == (lp_want is None)
            for a, b in zip(lp_got or [], lp_want or []):
                assert a.keys() == b.keys()
                assert all(abs(a[t] - b[t]) < 1e-4 for t in a)


def test_streamed_deltas_add_up_to_the_text_with_async_scheduling(pair):
    engine = pair[1].engine
    engine.add_request("s", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=20))
    text, finals = "", 0
    while engine.has_unfinished_requests():
        for d in engine.step():
            text += d.text
            finals += d.finished
    assert finals == 1
    assert text == engine.get_output("s").outputs[0].text
    engine.release("s")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_blocks_filled_by_generated_tokens_are_cached_once_their_tokens_are_known(async_scheduling):
    """A follow-up turn (prompt = last prompt + its answer) hits the blocks the answer filled. With
    async scheduling a block is hashed a step late, when its last token is read back; hashing it
    earlier would hash a short block and lose the hit."""
    engine = null_engine(async_scheduling, num_blocks=64, budget=64)
    first = list(range(1, 11))
    out = run_all(engine, [("a", first, SamplingParams(max_tokens=30, ignore_eos=True))])
    follow_up = first + out["a"][0][0]  # 40 tokens: 10 full blocks of 4
    engine.add_request("b", follow_up, SamplingParams(max_tokens=1, ignore_eos=True))
    engine.step()
    # every full block but the last (one token must be computed) was filled by request "a"
    assert engine.requests["b"].num_cached_tokens == 36


def test_a_dropped_engine_is_freed_without_the_cycle_collector(tiny_checkpoints):
    """On CUDA the engine freezes the objects start-up made (gc.freeze) so that full collections
    skip them; frozen objects in a reference cycle would never be freed, so the engine must hold
    none: dropping it frees it by reference counting alone."""
    import gc
    import weakref

    llm = LLM(tiny_checkpoints["llama"], num_kv_blocks=64, device=DEVICE)
    llm.generate(["a b c"], SamplingParams(max_tokens=4))
    refs = [weakref.ref(llm.engine), weakref.ref(llm.engine.runner),
            weakref.ref(llm.engine.runner.model), weakref.ref(llm.engine.runner.kv_caches[0])]
    gc.disable()
    try:
        del llm
        assert [r() is None for r in refs] == [True] * len(refs)
    finally:
        gc.enable()


def test_penalties_and_min_tokens_see_the_token_still_on_the_device(pair):
    """A penalised or min_tokens row launched while its last token is in flight reads that token
    on the device (pending_source) and counts it: penalties strong enough to steer greedy
    choices, and a stop id that min_tokens holds back until exactly its position, give the
    synchronous outputs."""
    sync, async_ = pair
    prompts = [{"prompt_token_ids": [(11 * i + 5 * j) % 4000 + 3 for j in range(6 + 7 * i)]}
               for i in range(4)]
    # a strong repetition penalty, and negative presence/frequency penalties that reward what
    # was generated: both move the greedy choice by the last token's value (the one in flight)
    for kind in (dict(repetition_penalty=50.0), dict(presence_penalty=-2.0, frequency_penalty=-1.0)):
        penalised = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, **kind)] * 4
        want = [o.outputs[0].token_ids for o in sync.generate(prompts, penalised)]
        assert [o.outputs[0].token_ids for o in async_.generate(prompts, penalised)] == want, kind
    free = sync.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=16,
                                                     ignore_eos=True))[0].outputs[0].token_ids
    k = next(k for k in range(3, 12) if free[k] not in free[:k])
    held = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, min_tokens=k,
                          stop_token_ids=[free[k]])
    got = [async_.generate(prompts[:1], held)[0].outputs[0].token_ids,
           sync.generate(prompts[:1], held)[0].outputs[0].token_ids]
    assert got[0] == got[1] == free[:k + 1]

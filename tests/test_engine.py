"""LLMEngine and LLM through the real model: sampling, stops, streaming text, bad input."""
from __future__ import annotations

import random

import pytest

from pagedllm import LLM, SamplingParams

from kv_invariants import check_kv_invariants


@pytest.fixture(scope="module")
def llm(tiny_checkpoints):
    return LLM(tiny_checkpoints["llama"], num_kv_blocks=512, max_model_len=512)


def prompts(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(3, 4096) for _ in range(rng.randint(3, 60))]}
            for _ in range(n)]


def all_free(llm: LLM) -> bool:
    check_kv_invariants(llm.engine.kv_cache)
    stats = llm.engine.kv_cache_stats()
    return stats["num_free_blocks"] == stats["num_total_blocks"]


def test_seeded_request_reproduces_alone_and_in_a_crowd(llm):
    target = prompts(1, seed=7)[0]
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate([target], seeded)[0].outputs[0].token_ids
    others = prompts(9, seed=8)
    crowd = others[:4] + [target] + others[4:]
    params = [SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True, seed=None if i % 2 else i)
              for i in range(9)]
    params.insert(4, seeded)
    crowded = llm.generate(crowd, params)[4].outputs[0].token_ids
    assert alone == crowded
    different_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=24, ignore_eos=True)
    assert llm.generate([target], different_seed)[0].outputs[0].token_ids != alone
    assert all_free(llm)


def test_top_k_1_equals_greedy(llm):
    ps = prompts(4, seed=3)
    greedy = llm.generate(ps, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    topk1 = llm.generate(ps, SamplingParams(temperature=1.5, top_k=1, max_tokens=16, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in greedy] == [o.outputs[0].token_ids for o in topk1]


def test_max_tokens_min_tokens_and_stop_token_ids(llm):
    p = prompts(1, seed=5)
    out = llm.generate(p, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 20 and out.finish_reason == "length"
    stop_id = out.token_ids[5]
    first = out.token_ids.index(stop_id)
    stopped = llm.generate(p, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_id]))
    o = stopped[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop_id
    assert o.token_ids == out.token_ids[:first + 1]
    held = llm.generate(p, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_id],
                                          min_tokens=first + 2))[0].outputs[0]
    assert len(held.token_ids) >= first + 2 and stop_id not in held.token_ids[:first + 2]


def _boundary_stop(llm: LLM, token_ids: list[int]) -> tuple[str, int]:
    """A 3-character string of the output that starts inside one token and ends in the next."""
    tok = llm.get_tokenizer()
    for k in range(2, len(token_ids) - 1):
        before = tok.decode(token_ids[:k])
        upto = tok.decode(token_ids[:k + 1])
        full = tok.decode(token_ids)
        if len(before) >= 2 and upto.startswith(before) and len(upto) > len(before) and "\ufffd" not in upto:
            s = full[len(before) - 2:len(before) + 1]
            if len(s) == 3 and full.find(s) == len(before) - 2:
                return s, len(before) - 2
    pytest.skip("no clean token boundary in this output")


def test_stop_string_across_token_boundary_never_emitted(llm):
    p = prompts(1, seed=11)
    base = llm.generate(p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0].outputs[0]
    stop, at = _boundary_stop(llm, base.token_ids)
    out = llm.generate(p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]))
    o = out[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop
    assert o.text == base.text[:at]
    assert stop not in o.text

    # Streaming: no delta ever carries any part of the stop string.
    engine = llm.engine
    engine.add_request("stream-stop", p[0]["prompt_token_ids"],
                       SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop]))
    deltas = []
    while engine.has_unfinished_requests():
        deltas += [d for d in engine.step() if d.request_id == "stream-stop"]
    engine.release("stream-stop")
    streamed = "".join(d.text for d in deltas)
    assert streamed == base.text[:at]
    assert sum(d.finished for d in deltas) == 1 and deltas[-1].finished
    assert all_free(llm)


def test_one_character_stop_string(llm):
    """A one-character stop string holds nothing back, and still stops (it once did not)."""
    p = prompts(1, seed=12)
    base = llm.generate(p, SamplingParams(temperature=0, max_tokens=60, ignore_eos=True))[0].outputs[0]
    stop = next(c for c in base.text[len(base.text) // 3:] if not c.isspace())
    o = llm.generate(p, SamplingParams(temperature=0, max_tokens=60, ignore_eos=True,
                                       stop=[stop]))[0].outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop
    assert o.text == base.text[:base.text.index(stop)]
    assert all_free(llm)


def test_streamed_deltas_concatenate_to_final_text(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=32, ignore_eos=True, logprobs=2)
    for i, p in enumerate(prompts(6, seed=21)):
        engine.add_request(f"s{i}", p["prompt_token_ids"], params)
    streamed: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for d in engine.step():
            streamed.setdefault(d.request_id, []).append(d)
    tok = llm.get_tokenizer()
    for rid, deltas in streamed.items():
        out = engine.get_output(rid).outputs[0]
        assert "".join(d.text for d in deltas) == out.text == tok.decode(out.token_ids)
        assert [t for d in deltas for t in d.token_ids] == out.token_ids
        assert [d.finished for d in deltas].count(True) == 1 and deltas[-1].finished
        assert len(out.logprobs) == 32 and all(t in lp for t, lp in zip(out.token_ids, out.logprobs))
        engine.release(rid)
    assert all_free(llm)


def test_text_prompt_is_tokenized(llm):
    out = llm.generate("def fib(n):", SamplingParams(temperature=0, max_tokens=8))[0]
    assert out.prompt == "def fib(n):"
    assert out.prompt_token_ids == llm.get_tokenizer().encode("def fib(n):")


@pytest.mark.parametrize("bad, message", [
    ({"prompt_token_ids": []}, "empty"),
    ({"prompt_token_ids": [1] * 600}, "max_model_len"),
    ({"prompt_token_ids": [5000]}, "prompt_token_ids"),
    ("", "empty"),
])
def test_bad_prompts_raise_naming_the_problem(llm, bad, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([prompts(1)[0], bad], SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished_requests() and all_free(llm)
    # The engine is still good for the next call.
    assert llm.generate(prompts(1), SamplingParams(max_tokens=4))[0].outputs[0].finish_reason == "length"


def test_prompt_larger_than_whole_cache(tiny_checkpoints):
    small = LLM(tiny_checkpoints["llama"], num_kv_blocks=4, max_model_len=1024)
    with pytest.raises(ValueError, match="KV blocks"):
        small.generate({"prompt_token_ids": [7] * 64}, SamplingParams(max_tokens=1))
    out = small.generate({"prompt_token_ids": [7] * 30}, SamplingParams(max_tokens=100, ignore_eos=True))
    assert out[0].outputs[0].finish_reason == "length"
    assert len(out[0].outputs[0].token_ids) == 4 * 16 - 30, "generation stops where the cache ends"


def test_abort_frees_blocks_in_any_state(llm):
    engine = llm.engine
    params = SamplingParams(max_tokens=200, ignore_eos=True)
    for i, p in enumerate(prompts(4, seed=40)):
        engine.add_request(f"a{i}", p["prompt_token_ids"], params)
    engine.step()
    [aborted] = engine.abort_request("a1")
    assert aborted.finished and aborted.finish_reason == "abort"
    assert engine.abort_request("a1") == [], "abort twice is a no-op"
    engine.step()
    for i in (0, 2, 3):
        assert [d.finish_reason for d in engine.abort_request(f"a{i}")] == ["abort"]
        engine.release(f"a{i}")
    engine.release("a1")
    assert not engine.has_unfinished_requests() and all_free(llm)


def test_reset_prefix_cache_makes_the_same_prompts_compute_again(llm):
    """Run twice, the second run's prompts hit the prefix cache; after a reset they compute
    again, with the same tokens. No reset while a request holds blocks (as vLLM)."""
    engine = llm.engine
    batch = prompts(4, seed=11)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)

    def hits_of(run):
        before = engine.kv_cache_stats()["prefix_cache_hits"]
        out = run()
        return engine.kv_cache_stats()["prefix_cache_hits"] - before, out

    assert engine.reset_prefix_cache()  # empties what earlier tests cached
    first_hits, first = hits_of(lambda: llm.generate(batch, params))
    again_hits, again = hits_of(lambda: llm.generate(batch, params))
    assert first_hits == 0 and again_hits > 0
    assert llm.reset_prefix_cache() is True
    assert engine.kv_cache_stats()["num_cached_blocks"] == 0
    fresh_hits, fresh = hits_of(lambda: llm.generate(batch, params))
    assert fresh_hits == 0
    tokens = [[o.outputs[0].token_ids for o in run] for run in (first, again, fresh)]
    assert tokens[0] == tokens[1] == tokens[2]

    engine.add_request("holding", batch[0]["prompt_token_ids"], params)
    engine.step()
    cached = engine.kv_cache_stats()["num_cached_blocks"]
    assert cached > 0 and engine.reset_prefix_cache() is False
    assert engine.kv_cache_stats()["num_cached_blocks"] == cached
    while engine.has_unfinished_requests():
        engine.step()
    engine.release("holding")
    assert all_free(llm) and engine.reset_prefix_cache() is True


def test_n_completions_of_one_prompt(llm):
    p = prompts(1, seed=70)
    seeded = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
    [out] = llm.generate(p, seeded)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    texts = [c.token_ids for c in out.outputs]
    assert len({tuple(t) for t in texts}) == 3, "each completion draws its own tokens"
    assert all(len(t) == 12 and c.finish_reason == "length" for t, c in zip(texts, out.outputs))
    assert [c.token_ids for c in llm.generate(p, seeded)[0].outputs] == texts, "seeds reproduce"
    # Completion 0 of n is the n=1 request with the same seed.
    one = SamplingParams(n=1, temperature=1.0, seed=5, max_tokens=12, ignore_eos=True)
    assert llm.generate(p, one)[0].outputs[0].token_ids == texts[0]
    greedy = llm.generate(p, SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True))
    a, b = greedy[0].outputs
    assert a.token_ids == b.token_ids and a.text == b.text
    assert all_free(llm)


def test_n_sequences_stream_with_their_index_and_one_final_delta(llm):
    engine = llm.engine
    p = prompts(1, seed=71)[0]["prompt_token_ids"]
    engine.add_request("nstream", p, SamplingParams(n=2, temperature=0.8, seed=1, max_tokens=20,
                                                    stop_token_ids=[7, 8, 9, 10, 11, 12]))
    texts, reasons, finals = {0: "", 1: ""}, {}, 0
    while engine.has_unfinished_requests():
        for d in engine.step():
            assert d.request_id == "nstream"
            texts[d.index] += d.text
            if d.finish_reason is not None:
                assert d.index not in reasons, "a sequence ends once"
                reasons[d.index] = d.finish_reason
            finals += d.finished
    assert finals == 1 and sorted(reasons) == [0, 1]
    out = engine.get_output("nstream")
    assert [c.text for c in out.outputs] == [texts[0], texts[1]]
    engine.release("nstream")
    assert all_free(llm)


def test_a_full_waiting_queue_refuses_with_an_overload_error(tiny_checkpoints):
    from pagedllm.errors import OverloadedError

    small = LLM(tiny_checkpoints["llama"], num_kv_blocks=64, max_num_seqs=1, max_queue_len=2)
    engine = small.engine
    p = prompts(4, seed=72)
    engine.add_request("q0", p[0]["prompt_token_ids"], SamplingParams(max_tokens=4))
    engine.add_request("q1", p[1]["prompt_token_ids"], SamplingParams(max_tokens=4))
    with pytest.raises(OverloadedError, match="max_queue_len 2"):
        engine.add_request("q2", p[2]["prompt_token_ids"], SamplingParams(max_tokens=4))
    with pytest.raises(OverloadedError):  # n counts: two sequences do not fit one place
        engine.step()  # admits q0: one place frees up
        engine.add_request("q3", p[3]["prompt_token_ids"], SamplingParams(n=2, max_tokens=4))
    engine.add_request("q2", p[2]["prompt_token_ids"], SamplingParams(max_tokens=4))
    while engine.has_unfinished_requests():
        engine.step()
    assert all(len(engine.get_output(r).outputs[0].token_ids) <= 4 for r in ("q0", "q1", "q2"))


def test_strict_max_tokens_names_the_field_instead_of_capping(tiny_checkpoints):
    strict = LLM(tiny_checkpoints["llama"], num_kv_blocks=64, max_model_len=100,
                 strict_max_tokens=True)
    p = {"prompt_token_ids": list(range(10, 40))}
    with pytest.raises(ValueError, match=r"max_tokens is 71.*at most 70"):
        strict.generate(p, SamplingParams(max_tokens=71))
    assert len(strict.generate(p, SamplingParams(max_tokens=70, ignore_eos=True))[0]
               .outputs[0].token_ids) == 70
    with pytest.raises(ValueError, match="max_tokens is 1000000000000"):
        strict.generate(p, SamplingParams(max_tokens=10**12))


def test_the_start_up_warm_up_runs_every_step_kind_and_leaves_the_engine_clean(llm):
    """warm_up runs at start-up on CUDA; here on CPU: it must run and leave no trace."""
    engine = llm.engine
    before = engine.kv_cache_stats()
    assert engine.runner.warm_up() == 2  # a full-budget prefill step and a mixed step
    assert engine.kv_cache_stats() == before and all_free(llm)
    p = prompts(2, seed=90)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    assert [o.outputs[0].token_ids for o in llm.generate(p, params)] == \
        [o.outputs[0].token_ids for o in llm.generate(p, params)]

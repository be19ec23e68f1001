"""Structured outputs in the engine (SamplingParams.structured_outputs), with the default model.

The default model has random weights and never writes JSON by itself: whatever it writes here
is the grammar's doing. What must hold: every output parses and validates (json), matches
(regex, choice, grammar); unconstrained rows in the same batch are untouched; chunked prefill,
preemption, prefix caching, n > 1, stop strings and async scheduling change nothing; a bad
schema, regex or grammar is a ValueError naming the field before anything is queued.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.layers.token_bitmask import apply_token_bitmasks
from pagedllm.structured_outputs_params import StructuredOutputsParams

from structured_schemas import schema

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "default")
PROMPTS = ["Hello", "def fib(n):", "The weather in Paris", "{", "Once upon a time"]


@pytest.fixture(scope="module")
def llm():
    return LLM(MODEL, num_kv_blocks=512, max_model_len=1024)


def json_params(i: int, **kw) -> SamplingParams:
    temperature = 0.0 if i % 3 == 0 else 1.0
    return SamplingParams(temperature=temperature, seed=i, max_tokens=256,
                          structured_outputs={"json": schema(i)}, **kw)


def test_100_json_schema_requests_validate(llm):
    params = [json_params(i) for i in range(100)]
    outs = llm.generate([PROMPTS[i % len(PROMPTS)] for i in range(100)], params)
    for i, out in enumerate(outs):
        c = out.outputs[0]
        assert c.finish_reason == "stop", (i, c.text)
        jsonschema.validate(json.loads(c.text), schema(i))
        assert c.token_ids[-1] == 0  # the grammar ended on EOS, which the text leaves out


def test_choice_regex_grammar_and_json_object(llm):
    cases = [
        ({"choice": ["yes", "no", "café ☕"]}, lambda t: t in ("yes", "no", "café ☕")),
        ({"regex": r"[0-9]{3}-[a-z]{2,4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", t)),
        ({"grammar": 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9]'},
         lambda t: re.fullmatch(r"\([1-9](\+[1-9])*\)", t)),
        ({"json_object": True}, lambda t: isinstance(json.loads(t), dict)),
    ]
    params = []
    for so, _ in cases:
        params += [SamplingParams(temperature=t, seed=3, max_tokens=48, structured_outputs=so)
                   for t in (0.0, 1.0)]
    outs = llm.generate(["Hello"] * len(params), params)
    for i, out in enumerate(outs):
        so, ok = cases[i // 2]
        c = out.outputs[0]
        if c.finish_reason == "length":  # json_object and this grammar are unbounded
            assert "json_object" in so or "grammar" in so
            continue
        assert c.finish_reason == "stop" and ok(c.text), (so, c.text)


def test_unconstrained_rows_are_untouched_by_constrained_ones(llm):
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, plain)]
    mixed_prompts, mixed_params = [], []
    for i, p in enumerate(PROMPTS):
        mixed_prompts += [p, p]
        mixed_params += [json_params(3 * i), plain]
    outs = llm.generate(mixed_prompts, mixed_params)
    assert [o.outputs[0].token_ids for o in outs[1::2]] == alone


def test_n_stop_strings_and_the_cache(llm):
    outs = llm.generate(["Hello"], json_params(1, n=4))
    texts = [c.text for c in outs[0].outputs]
    for t in texts:
        jsonschema.validate(json.loads(t), schema(1))
    assert len(set(texts)) > 1  # each sequence its own matcher and its own draws
    cut = llm.generate(["Hello"], json_params(0, stop=[","]))[0].outputs[0]
    whole = llm.generate(["Hello"], json_params(0))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == ","
    assert cut.text == whole.text[:whole.text.index(",")]
    compiler = llm.engine._grammars
    so = StructuredOutputsParams(json=schema(5))
    assert compiler.compile(so) is compiler.compile(StructuredOutputsParams(json=schema(5)))


def _run(prompts, params, **engine):
    llm = LLM(MODEL, **{"num_kv_blocks": 512, "max_model_len": 1024, **engine})
    outs = llm.generate(prompts, params)
    return [[(c.token_ids, c.text, c.finish_reason) for c in o.outputs] for o in outs], llm


def test_chunked_prefill_preemption_prefix_caching_and_async_change_nothing():
    long = [("Once upon a time " * (3 + i)) + str(i) for i in range(8)]
    prompts = long + long[:2]  # (the repeats hit the prefix cache)
    params = [json_params(i) for i in range(len(prompts))]
    base, _ = _run(prompts, params)
    small, llm = _run(prompts, params, num_kv_blocks=22, block_size=16,
                      max_num_batched_tokens=32)
    stats = llm.engine.kv_cache_stats()
    assert stats["num_preemptions"] > 0 and stats["num_partial_prefills"] > 0
    assert stats["prefix_cache_hits"] > 0
    assert small == base
    async_small, _ = _run(prompts, params, async_scheduling=True, num_kv_blocks=22,
                          max_num_batched_tokens=32)
    assert async_small == base


def test_async_constrained_and_plain_rows_together():
    plain = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    params = [plain, json_params(0), plain, json_params(2, n=2), plain]
    sync, _ = _run(PROMPTS, params)
    async_, _ = _run(PROMPTS, params, async_scheduling=True)
    assert async_ == sync


@pytest.mark.parametrize("so, field, words", [
    ({"json": {"type": "bogus"}}, "structured_outputs.json", "not valid"),
    ({"json": {"type": "array", "uniqueItems": True}}, "structured_outputs.json",
     "cannot enforce the JSON Schema keyword 'uniqueItems'"),
    ({"json": {"properties": {"a": {"not": {"type": "string"}}}}}, "structured_outputs.json",
     "at '/properties/a'"),
    ({"json": {"type": "string", "pattern": "(?=a)b"}}, "structured_outputs.json",
     "cannot enforce"),
    ({"regex": "(ab"}, "structured_outputs.regex", "not valid"),
    ({"regex": r"(a)\1"}, "structured_outputs.regex", "backreferences"),
    ({"grammar": "root ::= "}, "structured_outputs.grammar", "not valid"),
])
def test_bad_constraints_are_value_errors_naming_the_field(llm, so, field, words):
    with pytest.raises(ValueError) as e:
        llm.generate(["x"], SamplingParams(structured_outputs=so))
    assert str(e.value).startswith(field) and words in str(e.value)
    assert not llm.engine.has_unfinished_requests() and not llm.engine.requests


@pytest.mark.parametrize("data, words", [
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"json": "{"}}, "structured_outputs.json is not valid JSON"),
    ({"structured_outputs": {"backend": "outlines", "json": {}}}, "'backend'"),
    ({"structured_outputs": {"json": {}}, "min_tokens": 2}, "min_tokens"),
])
def test_params_shape_errors(data, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        SamplingParams.from_json(data)


def test_params_from_json_as_triton_clients_send_them():
    p = SamplingParams.from_json(json.dumps(
        {"temperature": "0", "structured_outputs": json.dumps({"choice": ["a", "b"]})}))
    assert p.structured_outputs == StructuredOutputsParams(choice=("a", "b"))
    old = SamplingParams.from_json({"guided_decoding": {"regex": "[ab]"}})
    assert old.structured_outputs.regex == "[ab]"
    back = StructuredOutputsParams.from_json(p.structured_outputs.to_json())
    assert back == p.structured_outputs


def test_bitmask_masks_only_its_rows():
    logits = torch.randn(3, 70)
    allowed = [5, 33, 64, 69]
    mask = torch.zeros(3, dtype=torch.int32)
    for t in allowed:
        word, bit = divmod(t, 32)
        mask[word] |= torch.tensor(1 << bit).to(torch.int32) if bit < 31 else \
            torch.tensor(-(2**31), dtype=torch.int32)
    mask[1] |= torch.tensor(-(2**31), dtype=torch.int32)  # token 63: bit 31 (the sign bit)
    out = apply_token_bitmasks(logits, [None, mask, None])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    finite = out[1].isfinite().nonzero().flatten().tolist()
    assert finite == sorted(allowed + [63])
    assert torch.equal(out[1, finite], logits[1, finite])


# ---- vLLM's other sampling fields (the OpenAI service passes them through) -------------------

def test_allowed_token_ids_logit_bias_bad_words_and_include_stop_str(llm):
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    base = llm.generate(["Hello"], plain)[0].outputs[0]
    allowed = [7, 300, 1000]
    out = llm.generate(["Hello"], SamplingParams(temperature=1.0, seed=1, max_tokens=12,
                                                 ignore_eos=True, allowed_token_ids=allowed))
    assert set(out[0].outputs[0].token_ids) <= set(allowed)
    forced = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                    logit_bias={42: 100}))[0].outputs[0]
    assert forced.token_ids == [42] * 6
    tok = llm.get_tokenizer()
    word = tok.decode(base.token_ids[2:3]).strip()
    forms = [tok.encode_plain(w) for w in (word, " " + word)]
    banned = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                    bad_words=[word]))[0].outputs[0].token_ids
    assert not any(banned[i:i + len(f)] == f for f in forms for i in range(len(banned)))
    assert banned != base.token_ids
    stop = base.text[4:7]
    kept = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                  stop=[stop], include_stop_str_in_output=True))
    assert kept[0].outputs[0].text == base.text[:base.text.index(stop) + len(stop)]
    with pytest.raises(ValueError, match="allowed_token_ids"):
        llm.generate(["x"], SamplingParams(allowed_token_ids=[99999]))
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate(["x"], SamplingParams(logit_bias={99999: 1.0}))


def test_bad_words_with_async_scheduling():
    params = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, bad_words=["the"]),
              SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)]
    sync, _ = _run(PROMPTS[:2], params)
    async_, _ = _run(PROMPTS[:2], params, async_scheduling=True)
    assert async_ == sync

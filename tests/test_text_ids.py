"""TextIds: the ids sent for each text delta decode, alone, to exactly that delta."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.detokenizer import IncrementalDetokenizer
from pagedllm_triton.text_ids import TextIds
from pagedllm.tokenizer import Tokenizer

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(DEFAULT_MODEL)


def _random_ids(tok: Tokenizer, rng: random.Random, n: int) -> list[int]:
    vocab = tok._tok.get_vocab_size()
    # Bias toward byte tokens and specials: they make split characters and invalid UTF-8.
    pool = list(range(1, 257)) + tok.all_special_ids
    return [rng.choice(pool) if rng.random() < 0.4 else rng.randrange(vocab) for _ in range(n)]


@pytest.mark.parametrize("skip", [True, False])
def test_each_delta_decodes_to_itself(tokenizer, skip):
    ti = TextIds(tokenizer, skip)
    detok = IncrementalDetokenizer(tokenizer)
    rng = random.Random(0)
    checked = 0
    for _ in range(40):
        prompt = tokenizer.encode("Once upon a time")
        state = detok.new_state(prompt, skip_special_tokens=skip)
        ids, pending, streamed = list(prompt), [], []
        for t in _random_ids(tokenizer, rng, 60):
            ids.append(t)
            text = detok.step([state], [ids])[0]
            sent = ti.ids_for(pending, [t], text)
            assert tokenizer.decode(sent, skip_special_tokens=True) == text
            streamed.append(text)
            checked += 1
        rest = detok.flush(state, ids)
        assert tokenizer.decode(ti.ids_for(pending, [], rest), skip_special_tokens=True) == rest
        assert "".join(streamed) + rest == tokenizer.decode(ids[len(prompt):], skip)
    assert checked == 40 * 60


def test_text_cut_anywhere(tokenizer):
    """Stop strings hold text back and cut it mid-token: every cut decodes exactly."""
    ti = TextIds(tokenizer)
    rng = random.Random(1)
    for _ in range(100):
        text = rng.choice(["héllo wörld ", "naïve café 東京タワー ", "emoji 🎉🚀 ok ", "  def f(x):\n\treturn x\n"])
        text = text * rng.randint(1, 3)
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        # Emit the text in random character chunks while tokens arrive in random groups.
        pending, sent_text, streamed, k = [], 0, [], 0
        while k < len(ids):
            group = ids[k:k + rng.randint(1, 3)]
            k += len(group)
            known = len(tokenizer.decode(ids[:k]).rstrip("\ufffd"))
            cut = rng.randint(sent_text, known) if k < len(ids) else len(text)
            piece = text[sent_text:cut]
            got = tokenizer.decode(ti.ids_for(pending, group, piece))
            assert got == piece
            streamed.append(got)
            sent_text = cut
        assert "".join(streamed) == text


def test_stream_of_engine_with_stop_strings(tokenizer):
    llm = LLM(model=str(DEFAULT_MODEL), num_kv_blocks=64)
    engine = llm.engine
    ti = TextIds(tokenizer)
    prompts = ["The little cat", "Il était une fois", "def main():\n    ", "昔々"]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt,
                           SamplingParams(max_tokens=40, stop=["e", " the", "\n"], ignore_eos=True))
    pending = {str(i): [] for i in range(len(prompts))}
    texts = {str(i): "" for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        for d in engine.step():
            got = tokenizer.decode(ti.ids_for(pending[d.request_id], d.token_ids, d.text))
            assert got == d.text
            texts[d.request_id] += got
    for rid, text in texts.items():
        assert text == engine.get_output(rid).outputs[0].text
        engine.release(rid)


def test_prompt_ids_decode_to_prompt(tokenizer):
    ti = TextIds(tokenizer, skip_special_tokens=False)
    ids = tokenizer.encode("a<|endoftext|>b ü")
    assert tokenizer.decode(ti.prompt_ids(ids), skip_special_tokens=True) == "a<|endoftext|>b ü"
    assert tokenizer.decode(TextIds(tokenizer).prompt_ids(ids)) == "ab ü"

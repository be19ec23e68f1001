"""Tokenizer wrapper and incremental detokenization.

Three tokenizers: the default model's (GPT-2-style byte-level BPE), and two trained here, offline,
in the shape of real checkpoints' tokenizer.json: Llama-3-style (byte-level BPE split by Llama-3's
regex, BOS added by the post-processor) and Llama-2-style (sentencepiece BPE with byte fallback,
"▁" for spaces, and a decoder that strips the first leading space). transformers is the oracle.
"""
from __future__ import annotations

import dataclasses

import json
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import (AddedToken, Regex, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)
from tokenizers import Tokenizer as RustTokenizer

from pagedllm.detokenizer import IncrementalDetokenizer
from pagedllm.tokenizer import Tokenizer

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3,
          "Héllo wörld, ça va? Ünïcödé ñ façade naïve café résumé.",
          "日本語のテキスト。中文文本，汉字。한국어 텍스트입니다.",
          "Emoji 😀🎉👍🏽 and symbols ∑∫√ € £ ¥.", "def f(x):\n    return x * 2\n\n",
          "  leading spaces\tand\ttabs\r\nCRLF lines", "Numbers 12345 67890 3.14159"] * 20
TRICKY = ["Hello world", " leading space", "two  spaces", "日本語のテキスト", "中文 😀 emoji 👍🏽",
          "naïve café", "tabs\tand\nnewlines\r\n", "", "<|endoftext|>in text", "x" * 50,
          "\u00e9\u0301 combining", "🏳️‍🌈 zwj"]
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXT = st.text(alphabet=st.one_of(st.characters(codec="utf-8"),
                                  st.sampled_from(list("中文日本語😀🎉👍🏽éüñ  \n\tab."))),
               max_size=30)


def _llama3_style(path: Path) -> None:
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    tok.save(str(path))


def _llama2_style(path: Path) -> None:
    trained = RustTokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    # A fixed alphabet (training ties would pick one at random), without CJK, emoji or 'H': those
    # fall back to <0xNN> byte tokens.
    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation + "▁éö")
                      - {"H"})
    trained.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=alphabet, limit_alphabet=len(alphabet),
        show_progress=False))
    data = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token, _ in sorted(data["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    tok = RustTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                   byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(path))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    dirs = {}
    for name, build in (("llama3", _llama3_style), ("llama2", _llama2_style)):
        d = tmp_path_factory.mktemp(name)
        build(d / "tokenizer.json")
        dirs[name] = d
    dirs["default"] = DEFAULT_MODEL
    return dirs


@pytest.fixture(params=["default", "llama3", "llama2"])
def tok_name(request, model_dirs) -> str:
    if not (model_dirs[request.param] / "tokenizer.json").exists():
        pytest.skip(f"{model_dirs[request.param]} not built (make model)")
    return request.param


@pytest.fixture
def tok(tok_name, model_dirs) -> Tokenizer:
    return Tokenizer.from_dir(model_dirs[tok_name])


@pytest.fixture(params=["default", "llama3"])
def byte_level_tok(request, model_dirs) -> Tokenizer:
    if not (model_dirs[request.param] / "tokenizer.json").exists():
        pytest.skip(f"{model_dirs[request.param]} not built (make model)")
    return Tokenizer.from_dir(model_dirs[request.param])


@pytest.fixture
def hf_tok(tok_name, model_dirs):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if tok_name == "default":
        return AutoTokenizer.from_pretrained(str(model_dirs["default"]))
    return PreTrainedTokenizerFast(tokenizer_file=str(model_dirs[tok_name] / "tokenizer.json"))


def stream(detok: IncrementalDetokenizer, prompt: list[int], output: list[int],
           chunks: list[int], skip: bool = True) -> str:
    """Feeds output in chunks (sizes cycled) and returns all deltas + flush, checking each."""
    state, ids, pieces, i, c = detok.new_state(prompt, skip), list(prompt), [], 0, 0
    while i < len(output):
        n = chunks[c % len(chunks)]
        ids.extend(output[i:i + n])
        i, c = i + n, c + 1
        delta = detok.step([state], [ids])[0]
        # NOTE: the byte-level shortcut emits U+FFFD for bytes that are invalid (never for an
        # incomplete character: the codec holds those back); the window method holds all back.
        assert state.byte_level or not delta.endswith("\ufffd"), (pieces, delta)
        pieces.append(delta)
    pieces.append(detok.flush(state, ids))
    return "".join(pieces)


# ----- the tokenizer wrapper --------------------------------------------------------------

def test_missing_tokenizer_json_names_path(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_malformed_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer"):
        Tokenizer.from_dir(tmp_path)


def test_encode_decode_match_transformers(tok, hf_tok):
    for text in TRICKY + CORPUS[:7]:
        ids = tok.encode(text)
        assert ids == hf_tok(text)["input_ids"], text
        for skip in (True, False):
            assert tok.decode(ids, skip) == hf_tok.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    assert tok.encode_batch(TRICKY) == [tok.encode(t) for t in TRICKY]
    batch = [tok.encode(t) for t in TRICKY]
    assert tok.decode_batch(batch) == [tok.decode(ids) for ids in batch]


def test_vocab_and_special_ids(tok, hf_tok, tok_name):
    assert tok.vocab_size == len(hf_tok)
    special = {"default": "<|endoftext|>", "llama3": "<|begin_of_text|>", "llama2": "</s>"}
    sid = tok.token_to_id(special[tok_name])
    assert sid in tok.all_special_ids
    assert tok.decode([sid]) == "" and tok.decode([sid], skip_special_tokens=False) != ""


def test_default_model_adds_no_bos(model_dirs):
    if not (model_dirs["default"] / "tokenizer.json").exists():
        pytest.skip("default model not built")
    t = Tokenizer.from_dir(model_dirs["default"])
    assert t.vocab_size == 4096
    assert t.decode(t.encode("hello world")) == "hello world"
    assert not set(t.encode("hello world")) & set(t.all_special_ids)


# ----- incremental detokenization ---------------------------------------------------------

@SETTINGS
@given(text=TEXT, data=st.data())
def test_streamed_continuation_equals_full_decode(tok, text, data):
    """Any text cut at any token: prompt text + streamed text == decode(everything)."""
    ids = tok.encode(text)
    k = data.draw(st.integers(0, len(ids)), label="cut")
    prompt, output = ids[:k], ids[k:]
    prompt_text, full = tok.decode(prompt), tok.decode(ids)
    assume(not prompt_text.endswith("\ufffd") and full.startswith(prompt_text))
    chunks = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=5), label="chunks")
    assert stream(IncrementalDetokenizer(tok), prompt, output, chunks) == full[len(prompt_text):]
    assert stream(IncrementalDetokenizer(tok), prompt, output, [1]) == full[len(prompt_text):]


@SETTINGS
@given(prompt_text=TEXT, text=TEXT, data=st.data())
def test_byte_level_deltas_equal_decode_of_output(byte_level_tok, prompt_text, text, data):
    """The invariant: deltas + flush == tokenizer.decode(output_ids), text or random ids.

    (Sentencepiece tokenizers are left out: decoding the output alone strips the leading space
    that the stream rightly keeps; the continuation test above covers them.)
    """
    tok = byte_level_tok
    detok = IncrementalDetokenizer(tok)
    prompt = tok.encode(prompt_text)
    random_ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=25), label="ids")
    skip = data.draw(st.booleans(), label="skip_special_tokens")
    chunks = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=5), label="chunks")
    for output in (tok.encode(text), random_ids):
        expected = tok.decode(output, skip_special_tokens=skip)
        assert stream(detok, prompt, output, [1], skip) == expected
        assert stream(detok, prompt, output, chunks, skip) == expected


@pytest.mark.parametrize("name, expected", [
    # "Smile" | "▁" "<0xF0>" "<0x9F>" "<0x98>" "<0x80>" "▁" "o" "k"
    ("llama2", [" ", "", "", "", "😀", " ", "o", "k"]),
    # "Smile" | "Ġð\x9f" "\x98" "\x80" "Ġ" "o" "k"   (bytes of " 😀 ok"): the byte-level
    # shortcut emits the complete space at once and holds back only the emoji's bytes.
    ("llama3", [" ", "", "😀", " ", "o", "k"]),
])
def test_split_character_is_held_back_until_complete(model_dirs, name, expected):
    tok = Tokenizer.from_dir(model_dirs[name])
    detok = IncrementalDetokenizer(tok)
    ids = tok.encode("Smile 😀 ok")
    prompt, output = ids[:len(tok.encode("Smile"))], ids[len(tok.encode("Smile")):]
    state, deltas = detok.new_state(prompt), []
    for n in range(1, len(output) + 1):
        deltas.append(detok.step([state], [prompt + output[:n]])[0])
    assert deltas == expected


def test_context_window_starts_at_a_character_boundary(model_dirs):
    """Five tokens back is inside "\x80": <0xC2> | <0x80> <0xF0> <0x90> <0x80> <0x80>."""
    tok = Tokenizer.from_dir(model_dirs["llama2"])
    detok = IncrementalDetokenizer(tok)
    ids = tok.encode("\x80\U00010000" + "6")  # <s> ▁ + 6 byte tokens + <0x36>
    prompt = ids[:-1]
    state = detok.new_state(prompt)
    assert detok.step([state], [ids]) == ["6"]  # not "\ufffd": the byte run stays valid UTF-8


def test_sentencepiece_first_output_token_keeps_its_space(model_dirs):
    tok = Tokenizer.from_dir(model_dirs["llama2"])
    detok = IncrementalDetokenizer(tok)
    ids = tok.encode("The quick brown")  # <s> ▁The ▁quick ▁brown
    prompt, word = ids[:-1], ids[-1:]
    state = detok.new_state(prompt)
    assert detok.step([state], [prompt + word])[0] == " brown"
    assert tok.decode(word) == "brown"  # what decoding each token alone would have lost


def test_flush_emits_an_incomplete_character_as_replacement(tok):
    detok = IncrementalDetokenizer(tok)
    emoji = tok.encode("😀")
    emoji = [t for t in emoji if t not in tok.all_special_ids]
    partial = emoji[:-1] if len(emoji) > 1 else None
    if partial is None:
        pytest.skip("😀 is one token in this vocabulary")
    prompt = tok.encode("a")
    state = detok.new_state(prompt)
    assert detok.step([state], [prompt + partial])[0] == ""
    tail = detok.flush(state, prompt + partial)
    assert tail.endswith("\ufffd")
    assert tail == tok.decode(prompt + partial)[len(tok.decode(prompt)):]


def test_no_new_tokens_gives_empty_delta_and_keeps_state(tok):
    detok = IncrementalDetokenizer(tok)
    prompt = tok.encode("abc def")
    state = detok.new_state(prompt)
    before = dataclasses.replace(state)
    assert detok.step([state], [prompt]) == [""]
    assert state == before
    assert detok.flush(state, prompt) == ""


def test_step_checks_lengths(tok):
    detok = IncrementalDetokenizer(tok)
    with pytest.raises(ValueError, match="all_token_ids"):
        detok.step([detok.new_state([])], [])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.tuples(TEXT, TEXT, st.booleans()), min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_batched_step_equals_per_request_step(tok, texts, seed):
    """One step over many requests (mixed skip_special_tokens, uneven progress) == one by one."""
    rng = random.Random(seed)
    detok = IncrementalDetokenizer(tok)
    special = tok.all_special_ids
    reqs = []
    for prompt_text, text, skip in texts:
        output = tok.encode(text)
        if special:
            output.insert(rng.randint(0, len(output)), special[0])
        prompt = tok.encode(prompt_text)
        reqs.append((prompt, output, detok.new_state(prompt, skip), detok.new_state(prompt, skip)))
    lens = [0] * len(reqs)
    while any(n < len(r[1]) for n, r in zip(lens, reqs)):
        lens = [min(n + rng.randint(0, 3), len(r[1])) for n, r in zip(lens, reqs)]
        all_ids = [r[0] + r[1][:n] for n, r in zip(lens, reqs)]
        batched = detok.step([r[2] for r in reqs], all_ids)
        alone = [detok.step([r[3]], [ids])[0] for r, ids in zip(reqs, all_ids)]
        assert batched == alone
        assert [r[2] for r in reqs] == [r[3] for r in reqs]

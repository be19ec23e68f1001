"""The ONNX tokenizer/detokenizer (pagedllm_triton.serving.tokenizer_onnx) against `tokenizers`.

Four byte-level BPE tokenizers: the default model's (GPT-2 regex), and three trained here offline
in the shape of real checkpoints' tokenizer.json: Llama-3-style (Llama-3 regex, ignore_merges,
BOS added by the post-processor), Qwen2-style (Qwen2 regex, NFC normalizer, no BOS, non-special
added tokens like Qwen2.5's <tool_call>), and one whose post-processor adds BOS and EOS (the
suffix path). The oracle is pagedllm's Tokenizer (the Rust `tokenizers`), which the engine uses.
"""
from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import (AddedToken, Regex, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)
from tokenizers import Tokenizer as RustTokenizer

from pagedllm.byte_tokens import byte_token_ids, padding_token_id, special_token_ids
from pagedllm.tokenizer import Tokenizer

from pagedllm_tools import ROOT
from pagedllm_triton.serving import tokenizer_onnx as ex

DEFAULT_MODEL = ROOT / "models" / "default"
CORPUS = ["The quick brown fox jumps over the lazy dog. It's 2024, isn't it? I'll say we'd go.",
          "Le café est très bon à Paris; naïve façade, Ærøskøbing, ÉCOLE über Straße.",
          "日本語のテキストと中文文本，还有한국어 문장。", "Привет мир! Γειά σου κόσμε. مرحبا بالعالم",
          "def main():\n    for i in range(10):\n\tprint(i)  # comment\n",
          "Emoji 😀🎉👍🏽 and symbols ©®™ — “quotes” «guillemets»",
          "Numbers 1234567 3.14159 0xFF 1,000,000 and    spaces\n\n\nnewlines"] * 30

# Hand-picked: the cases that break tokenizers (whitespace runs, contractions, digit runs, special
# tokens in text, characters split across byte tokens).
HAND_PICKED = [
    "", " ", "  ", "\n", "\t", "\r\n", " \n \n", "   \t\n  ", "\u00a0", "\u3000",
    "Hello world", " Hello", "  Hello", "Hello ", "Hello  ", "hello\nworld", "a\n\n\nb",
    "It's", "IT'S", "they'll we've I'm you'd", "don't 'S' 'll", "'''", "\"quoted\"",
    "1", "12", "123", "1234", "1234567890", "3.14159", "1,000,000", "v2.0.1", "a1b2c3",
    "!!!", "???", "...", "--->", "<=>", "x!!!???...,,;;", "@#$%^&*()", "[]{}<>", "~`|\\/",
    "café", "naïve", "Ærøskøbing", "ÉCOLE", "Straße", "ñandú", "Čeština", "Łódź",
    "日本語", "中文文本", "한국어", "テキスト", "漢字とかな", "。，、",
    "😀", "😀😀", "👍🏽", "🏳️‍🌈", "🇫🇷", "❤️", "a😀b", " 😀 ",
    "Привет", "Γειά", "مرحبا", "שלום", "नमस्ते", "ไทย",
    "def f(x):\n    return x * 2\n", "\tif a:\n\t\tb()\n", "    indented", "\n\n    x = 1",
    "for (int i = 0; i < n; i++) {", "<div class=\"a\">text</div>", "SELECT * FROM t;",
    "https://example.com/path?q=1&r=2", "user@example.com", "C:\\Windows\\path",
    "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
    "<|begin_of_text|>hi", "<|im_start|>user\nhi<|im_end|>", "<|endoftext", "|endoftext|>",
    "<tool_call>\n{\"a\": 1}\n</tool_call>", "a<tool_call>b", "x<y", "a<", "<>",
    "x" * 300, "ab " * 100, "日本" * 50,
]
POOLS = [
    "the", " quick", " brown", "fox", " jumps", "Hello", " World", "It's", " I'LL", "don't",
    "café", " naïve", " Ærø", "über", " Straße", "日本語", "中文", " 한국어", "テキスト", "。",
    "😀", "🎉", "👍🏽", " ❤️", "Привет", " мир", "Γειά", "مرحبا", "123", "4567", "3.14", " 0x1F",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "    ", "!!", "?", ".", ",", ";", "->", "==",
    "(", ")", "{", "}", "#", "'", "\"", "<|endoftext|>", "def ", "return", "\u00a0", "\u2003",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(POOLS) for _ in range(rng.randint(1, 25))) for _ in range(n)]


TEXTS = HAND_PICKED + _random_texts(200)
# NOTE: all NFC: the Qwen2-style tokenizer's ONNX model is exact on NFC text only.
assert all(unicodedata.is_normalized("NFC", t) for t in TEXTS)


def _train(out: Path, regex: str, specials: list[str], *, nfc: bool = False,
           ignore_merges: bool = False, template: str | None = None,
           plain_added: tuple[str, ...] = ()) -> Path:
    tok = RustTokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    byte_level = processors.ByteLevel(trim_offsets=False)
    if template:
        ids = [(s, tok.token_to_id(s)) for s in specials]
        tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=template, pair=template + " $B", special_tokens=ids)])
    else:
        tok.post_processor = byte_level
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_added])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """{name: model dir with a tokenizer.json}: default, llama3, qwen2, bos_eos."""
    root = tmp_path_factory.mktemp("onnx_tokenizers")
    return {
        "default": DEFAULT_MODEL,
        "llama3": _train(root / "llama3", ex.LLAMA3_REGEX,
                         ["<|begin_of_text|>", "<|end_of_text|>"], ignore_merges=True,
                         template="<|begin_of_text|> $A"),
        "qwen2": _train(root / "qwen2", ex.QWEN2_REGEX,
                        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], nfc=True,
                        plain_added=("<tool_call>", "</tool_call>")),
        "bos_eos": _train(root / "bos_eos", ex.GPT2_REGEX, ["<s>", "</s>"],
                          template="<s> $A </s>"),
    }


@pytest.fixture(scope="session")
def exported(model_dirs, tmp_path_factory):
    """{name: (Tokenizer, preprocessing session, postprocessing session, spec)}."""
    out = tmp_path_factory.mktemp("onnx_models")
    result = {}
    for name, model_dir in model_dirs.items():
        pre, post = out / f"{name}_pre.onnx", out / f"{name}_post.onnx"
        spec = ex.export(model_dir, pre, post)
        result[name] = (Tokenizer.from_dir(model_dir), ex.session(ex.onnx.load(pre)),
                        ex.session(ex.onnx.load(post)), spec)
    return result


NAMES = ["default", "llama3", "qwen2", "bos_eos"]


def _encode(pre, texts: list[str], flags: list | None = None) -> list[list[int]]:
    """The ids of each text; `flags`, when given, gets each text's text_has_nul."""
    ids, lengths, has_nul = pre.run(
        None, {"text_input": np.array(texts, dtype=object).reshape(-1, 1)})
    assert ids.dtype == np.int64 and lengths.dtype == np.int64 and has_nul.dtype == np.bool_
    assert ids.shape[0] == lengths.shape[0] == len(texts) and lengths.shape[1] == 1
    assert has_nul.shape == (len(texts), 1)
    if flags is not None:
        flags.extend(has_nul[:, 0].tolist())
    return [row[:n].tolist() for row, n in zip(ids, lengths[:, 0])]


def _decode(post, rows: list[list[int]], pad: int) -> list[str]:
    width = max(1, *map(len, rows))
    batch = np.array([r + [pad] * (width - len(r)) for r in rows], dtype=np.int64)
    # Half the rows as a batch of requests, half as one request's completions: [B, n, L].
    out = post.run(None, {"output_ids": batch[:, None, :]})[0]
    assert out.shape == (len(rows), 1)
    both = post.run(None, {"output_ids": batch[None, :, :]})[0]
    assert both.shape == (1, len(rows)) and both[0].tolist() == out[:, 0].tolist()
    return [s.decode() if isinstance(s, bytes) else s for s in out[:, 0]]


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_ids_equal_encode_in_mixed_batches(exported, name):
    tokenizer, pre, _, _ = exported[name]
    want = [tokenizer.encode(t) for t in TEXTS]
    got, start = [], 0
    for size in [1, 7, 64, 3, 1000]:  # batches of mixed sizes and lengths, the last = the rest
        got += _encode(pre, TEXTS[start:start + size])
        start += size
    assert len(TEXTS) >= 200 and start >= len(TEXTS)
    for text, g, w in zip(TEXTS, got, want):
        assert g == w, f"{name}: {text!r}"


def test_bos_and_eos_come_from_the_post_processor(exported):
    llama3, pre, _, spec = exported["llama3"]
    bos = llama3.token_to_id("<|begin_of_text|>")
    assert spec.prefix_ids == [bos] and spec.suffix_ids == []
    assert _encode(pre, ["", "hi"]) == [[bos], [bos, *llama3.encode("hi")[1:]]]
    tok, pre, _, spec = exported["bos_eos"]
    assert spec.prefix_ids == [tok.token_to_id("<s>")]
    assert spec.suffix_ids == [tok.token_to_id("</s>")]
    assert _encode(pre, ["", "a much longer text", "b"]) == [
        tok.encode(""), tok.encode("a much longer text"), tok.encode("b")]


def test_special_tokens_in_text_are_matched_like_tokenizers(exported):
    tokenizer, pre, _, _ = exported["default"]
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert _encode(pre, ["<|endoftext|>", "a<|endoftext|>b"])[0] == [eot]
    assert eot in _encode(pre, ["a<|endoftext|>b"])[0]


def test_empty_batch_of_texts_gives_zero_lengths(exported):
    _, pre, _, _ = exported["default"]
    ids, lengths, has_nul = pre.run(None, {"text_input": np.array([[""], [""]], dtype=object)})
    assert lengths.tolist() == [[0], [0]] and ids.shape[0] == 2
    assert has_nul.tolist() == [[False], [False]]


@pytest.mark.parametrize("name", NAMES)
def test_postprocessing_equals_decode_skipping_special_tokens(exported, name):
    tokenizer, _, post, spec = exported[name]
    rows = [tokenizer.encode(t) for t in TEXTS]
    special = tokenizer.all_special_ids
    rows += [[special[-1], *r[:5], spec.pad_id, *r[5:]] for r in rows[:50]]  # specials inside
    got = []
    for start in range(0, len(rows), 64):
        got += _decode(post, rows[start:start + 64], spec.pad_id)
    for row, g in zip(rows, got):
        assert g == tokenizer.decode(row, skip_special_tokens=True), row


def test_leading_spaces_and_padding_rows(exported):
    tokenizer, _, post, spec = exported["default"]
    texts = [" Hello", "  two", "\n\tx", " "]
    assert _decode(post, [tokenizer.encode(t) for t in texts], spec.pad_id) == texts
    assert _decode(post, [[spec.pad_id] * 3, tokenizer.encode(" a")], spec.pad_id) == ["", " a"]


@pytest.mark.parametrize("name", NAMES)
def test_single_byte_tokens_decode_to_their_bytes(exported, model_dirs, name):
    tokenizer, _, post, spec = exported[name]
    byte_ids = byte_token_ids(model_dirs[name])
    assert len(byte_ids) == 256 and len(set(byte_ids)) == 256
    assert _decode(post, [[byte_ids[b]] for b in range(1, 128)], spec.pad_id) == [
        chr(b) for b in range(1, 128)]  # NUL: see test_nul_ends_a_text
    texts = TEXTS[:120]
    rows = [[byte_ids[b] for b in t.encode()] for t in texts]
    assert _decode(post, rows, spec.pad_id) == texts
    # mixed: normal tokens, then a fragment as byte tokens, then normal tokens again
    mixed = [tokenizer.encode(" ab")[-1:] + [byte_ids[b] for b in "é😀".encode()]]
    assert _decode(post, mixed, spec.pad_id) == [tokenizer.decode(mixed[0])]


def _utf8_groups(ids: list[int], token_bytes: list[bytes]) -> list[list[int]]:
    """Splits ids into the shortest runs whose bytes are complete UTF-8 (what `llm` sends)."""
    groups, run, pending = [], [], b""
    for i in ids:
        run.append(i)
        pending += token_bytes[i]
        try:
            pending.decode("utf-8")
        except UnicodeDecodeError:
            continue
        groups.append(run)
        run, pending = [], b""
    assert not run, "the generated ids end inside a character"
    return groups


def test_a_text_with_nul_is_flagged(exported, model_dirs):
    """The documented difference: onnxruntime-extensions reads C strings. The graph cuts a text
    at its first NUL (so the op never meets one) and flags it, for the llm step to refuse."""
    tokenizer, pre, post, spec = exported["llama3"]
    flags = []
    assert _encode(pre, ["a<b\x00c d", "\x00", "x", "", "ab\x00"], flags) == [
        tokenizer.encode("a<b"), tokenizer.encode(""), tokenizer.encode("x"),
        tokenizer.encode(""), tokenizer.encode("ab")]
    assert flags == [True, True, False, False, True]
    nul, a = byte_token_ids(model_dirs["llama3"])[0], tokenizer.encode("a")[-1]
    assert _decode(post, [[a, nul, a], [a]], spec.pad_id) == ["aa", "a"]  # NUL decodes to ""


@pytest.mark.parametrize("name", NAMES)
def test_streamed_groups_concatenate_to_the_full_decode(exported, name):
    tokenizer, _, post, spec = exported[name]
    token_bytes = tokenizer.token_bytes()
    special = tokenizer.all_special_ids
    rng = random.Random(1)
    split_chars = 0
    for text in _random_texts(40, seed=7):
        ids = tokenizer.encode(text)
        for _ in range(3):  # special ids (skipped) in random places
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
        groups = _utf8_groups(ids, token_bytes)
        split_chars += sum(len(g) > 1 for g in groups)
        streamed = "".join(_decode(post, groups, spec.pad_id))
        assert streamed == tokenizer.decode(ids)
    assert split_chars > 0  # some characters were split across tokens


def test_exported_models_signature(exported):
    for name in ("default", "llama3"):
        spec = exported[name][3]
        pre, post = ex.build_preprocessing(spec), ex.build_postprocessing(spec)

        def io(values):
            return [(v.name, v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                    for v in values]

        string, int64, bool_ = ex.TensorProto.STRING, ex.TensorProto.INT64, ex.TensorProto.BOOL
        assert io(pre.graph.input) == [("text_input", string, ["batch", 1])]
        assert io(pre.graph.output) == [("input_ids", int64, ["batch", "max_len"]),
                                        ("input_lengths", int64, ["batch", 1]),
                                        ("text_has_nul", bool_, ["batch", 1])]
        assert io(post.graph.input) == [("output_ids", int64, ["batch", "n", "len"])]
        assert io(post.graph.output) == [("text_output", string, ["batch", "n"])]
        assert pre.ir_version == post.ir_version == ex.IR_VERSION


def test_padding_token_is_special_and_decodes_to_nothing(model_dirs):
    assert padding_token_id(DEFAULT_MODEL) == 0  # <|endoftext|>
    for model_dir in model_dirs.values():
        pad = padding_token_id(model_dir)
        assert pad in special_token_ids(model_dir)
        assert Tokenizer.from_dir(model_dir).decode([pad]) == ""


def test_qwen2_nfc_is_a_warning_and_strict_refuses_it(exported, model_dirs):
    tokenizer, pre, post, spec = exported["qwen2"]
    assert any("NFC" in w for w in spec.warnings)
    with pytest.raises(ValueError, match="NFC"):
        ex.tokenizer_spec(model_dirs["qwen2"], strict=True)
    # the documented difference: decomposed text keeps its decomposed bytes, and decodes back
    decomposed = "cafe\u0301"
    (ids,) = _encode(pre, [decomposed])
    assert _decode(post, [ids], spec.pad_id) == [decomposed]
    assert tokenizer.decode(tokenizer.encode(decomposed)) == "café"  # tokenizers normalizes
    assert not exported["default"][3].warnings and not exported["llama3"][3].warnings


def _edited(out: Path, edit) -> Path:
    """A copy of the default model's tokenizer.json with `edit` applied, in directory `out`."""
    tok = RustTokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    edit(tok)
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    return out


def test_unsupported_tokenizers_raise_value_error(tmp_path):
    # sentencepiece-style: byte fallback BPE with Metaspace ("▁" for spaces)
    spm = RustTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace()
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    spm.train_from_iterator(CORPUS[:7], trainers.BpeTrainer(vocab_size=300,
                                                            special_tokens=["<unk>", "<s>"]))
    (tmp_path / "spm").mkdir()
    spm.save(str(tmp_path / "spm" / "tokenizer.json"))
    with pytest.raises(ValueError, match="byte_fallback"):
        ex.export(tmp_path / "spm", tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert not (tmp_path / "a.onnx").exists()

    cases = {
        "regex": lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\p{L}+|\s+|."), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
        "add_prefix_space": lambda t: setattr(
            t, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)),
        "Lowercase": lambda t: setattr(t, "normalizer", normalizers.Lowercase()),
        "Digits": lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.Sequence([
            pre_tokenizers.Digits(), pre_tokenizers.ByteLevel(add_prefix_space=False)])),
    }
    for match, edit in cases.items():
        with pytest.raises(ValueError, match=match):
            ex.tokenizer_spec(_edited(tmp_path / match, edit))
    with pytest.raises(ValueError, match="byte-level BPE"):
        byte_token_ids(tmp_path / "spm")


def test_cli_writes_both_models(tmp_path, capsys):
    pre, post = tmp_path / "pre" / "model.onnx", tmp_path / "post" / "model.onnx"
    assert ex.main(["--model", str(DEFAULT_MODEL), "--out-pre", str(pre),
                    "--out-post", str(post)]) == 0
    assert pre.stat().st_size > 0 and post.stat().st_size > 0
    assert ex.main(["--model", str(tmp_path), "--out-pre", str(pre), "--out-post", str(post)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_importing_the_extensions_leaves_protobufs_implementation_alone():
    """onnxruntime_extensions sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python when imported;
    make serve builds the repository before it starts the front door, which then parsed every
    gRPC response with pure-Python protobuf (a third of its time under load)."""
    import os
    import subprocess
    import sys

    key = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
    code = ("import os; from pagedllm_triton.serving import tokenizer_onnx as ex; "
            "ex.import_extensions(); print(os.environ.get('%s'))" % key)
    env = {k: v for k, v in os.environ.items() if k != key}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["None"]
    env[key] = "upb"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["upb"]

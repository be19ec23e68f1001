"""Builds the ONNX tokenizer (`preprocessing`) and detokenizer (`postprocessing`) of a model.

Both are small graphs around one onnxruntime-extensions op each (domain ai.onnx.contrib:
HfJsonTokenizer, StringJoin), built from the model's tokenizer.json with onnx.helper (the
extensions' gen_processing_models fails with transformers 5). Either server runs them: the NGC
container's native onnxruntime backend, or backends/onnxruntime (a Python-based stand-in) under
the server of the nvidia-pytriton wheel.

    preprocessing   text_input     STRING [batch, 1]
                 -> input_ids      INT64  [batch, max_len]   row i: its first input_lengths[i] ids
                    input_lengths  INT64  [batch, 1]         are Tokenizer.encode(text_i); the rest
                                                             is padding (a special id)
    postprocessing  output_ids     INT64  [batch, n, len]    n rows (a request's completions)
                 -> text_output    STRING [batch, n]         decode(row, skip_special_tokens=True)

Supported: byte-level BPE (GPT-2, Llama-3, Qwen2 style), i.e. a BPE model without byte fallback,
a ByteLevel decoder, and as pre-tokenizer either ByteLevel with GPT-2's regex or Split(regex) +
ByteLevel(use_regex=false) with GPT-2's, Llama-3's or Qwen2's regex. The post-processor may add
fixed special tokens before/after the text (Llama-3's `<|begin_of_text|>`). Special tokens written
in the text are matched as Hugging Face `tokenizers` matches them. Anything else (sentencepiece /
Metaspace, byte fallback, other regexes or normalizers, added tokens with lstrip/rstrip/
single_word) raises ValueError naming it. Every export is checked against `tokenizers` on a
probe text set before it is written.

Known, bounded differences (warnings; `strict=True` / --strict makes them errors):
- an NFC normalizer (Qwen2) is not applied: text already in NFC (nearly all text) tokenizes
  exactly; decomposed text (e.g. "e" + U+0301) gets other ids that still decode to it;
- with `ignore_merges: false` (GPT-2, Qwen2) the op still looks a whole pre-token up in the vocab
  first; a vocab token that the merges cannot rebuild from its own text would tokenize
  differently. The export counts such tokens (none in the default model).
Always: NUL (U+0000) does not pass, as ONNX Runtime string constants and onnxruntime-extensions
read C strings. Preprocessing flags a text that holds one (`text_has_nul`; the `llm` step refuses
such a request, naming the NUL, rather than serve the text cut short), and postprocessing decodes
the NUL byte's token to nothing.

    python -m pagedllm_triton.serving.tokenizer_onnx --model DIR --out-pre PATH --out-post PATH
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from pagedllm.byte_tokens import (bytes_to_unicode, load_tokenizer_json,
                                  padding_token_id)
from pagedllm.tokenizer import Tokenizer

log = logging.getLogger("export_tokenizer_onnx")

CONTRIB = "ai.onnx.contrib"
# NOTE: IR 9 / opset 20 (StringConcat, StringSplit) so the NGC 24.10 container's ONNX Runtime
# 1.19 loads the models too (onnx 1.23 would otherwise stamp an IR version that runtime rejects).
IR_VERSION = 9
OPSET = 20

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SUPPORTED_REGEXES = {GPT2_REGEX: "GPT-2", LLAMA3_REGEX: "Llama-3", QWEN2_REGEX: "Qwen2"}

# Checked against `tokenizers` at every export: scripts, digit runs, contractions, whitespace runs.
PROBE_TEXTS = [
    "Hello world! It's a test, isn't it? I'LL SAY WE'D.", " leading space", "  two", "\ttab\n",
    "Numbers: 1234567 3.14159 1,000,000 and 12ab34", "x!!!???...,,;; --> <= ===",
    "Le café est très bon; naïve façade, Ærøskøbing.", "日本語のテキストと中文文本，还有한국어。",
    "Emoji 😀🎉👍🏽 ©®™ “quotes” «guillemets»", "Привет мир! Γειά σου κόσμε. مرحبا",
    "def main():\n    for i in range(10):\n\tprint(i)  # comment\n", "\r\n\r\n  \n", " ", "",
    "a   b    c\n\n\nd", "\u00a0nbsp\u2003em\u3000ideographic",
]


@dataclass
class TokenizerSpec:
    """What the two graphs need, checked and derived from one tokenizer.json.

    Attributes:
        json_text: the tokenizer.json text (given whole to HfJsonTokenizer).
        token_bytes: each id's bytes in a decoded text (b"" for special tokens).
        prefix_ids / suffix_ids: special ids the post-processor puts around every text.
        pad_id: the special id that pads rows (see pagedllm.byte_tokens.padding_token_id).
        warnings: known differences from `tokenizers` (see the module docstring).
    """

    json_text: str
    token_bytes: list[bytes]
    prefix_ids: list[int]
    suffix_ids: list[int]
    pad_id: int
    warnings: list[str] = field(default_factory=list)


def _pre_tokenizer_regex(pre: dict | None) -> str:
    """The one pre-tokenizer regex of a byte-level pre_tokenizer; ValueError if unsupported."""
    if pre is None:
        raise ValueError("pre_tokenizer: none; need a ByteLevel pre-tokenizer (byte-level BPE)")
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise ValueError("pre_tokenizer: ByteLevel add_prefix_space=true is not supported")
        if not pre.get("use_regex", True):
            raise ValueError("pre_tokenizer: ByteLevel without a regex split is not supported")
        return GPT2_REGEX
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if (not steps or len(steps) != 2 or steps[0].get("type") != "Split"
            or steps[1].get("type") != "ByteLevel"):
        kinds = [s.get("type") for s in steps] if steps else pre.get("type")
        raise ValueError(f"pre_tokenizer: {kinds} is not supported; need ByteLevel or "
                         "Sequence[Split(regex), ByteLevel] (byte-level BPE: GPT-2/Llama-3/Qwen2)")
    split, byte_level = steps
    if byte_level.get("add_prefix_space") or byte_level.get("use_regex"):
        raise ValueError("pre_tokenizer: after a Split, ByteLevel must have add_prefix_space=false "
                         "and use_regex=false")
    regex = (split.get("pattern") or {}).get("Regex")
    if (regex not in SUPPORTED_REGEXES or split.get("invert")
            or split.get("behavior") != "Isolated"):
        raise ValueError(f"pre_tokenizer: Split(pattern={split.get('pattern')!r}, behavior="
                         f"{split.get('behavior')!r}, invert={split.get('invert')!r}) is not "
                         "supported; onnxruntime-extensions reproduces only the Isolated split "
                         "with the GPT-2, Llama-3 or Qwen2 regex")
    return regex


def check_supported(tok: dict) -> list[str]:
    """Raises ValueError naming the first part of `tok` the ONNX ops cannot reproduce.

    Returns:
        The known, bounded differences that remain (see the module docstring).
    """
    warnings = []
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"model: type {model.get('type')!r} is not supported; need byte-level BPE")
    if model.get("byte_fallback"):
        raise ValueError("model: byte_fallback=true (a sentencepiece-style BPE) is not supported; "
                         "need byte-level BPE")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise ValueError(f"model: {key}={model[key]!r} is not supported")
    decoder = tok.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise ValueError(f"decoder: {decoder.get('type')!r} is not supported; need ByteLevel "
                         "(sentencepiece/Metaspace tokenizers are not byte-level BPE)")
    normalizer = tok.get("normalizer")
    if normalizer is not None:
        if normalizer.get("type") != "NFC":
            raise ValueError(f"normalizer: {normalizer.get('type')!r} is not supported "
                             "(only none or NFC)")
        warnings.append("normalizer NFC is not applied: text not already in NFC tokenizes "
                        "differently (it still decodes to the same text)")
    regex = _pre_tokenizer_regex(tok.get("pre_tokenizer"))
    log.info("pre-tokenizer regex: %s", SUPPORTED_REGEXES[regex])
    for added in tok.get("added_tokens") or []:
        flags = [k for k in ("lstrip", "rstrip", "single_word") if added.get(k)]
        if flags:
            raise ValueError(f"added_tokens: {added['content']!r} has {'/'.join(flags)}=true, "
                             "which onnxruntime-extensions does not reproduce")
    alphabet = set(bytes_to_unicode().values())
    added_ids = {a["id"] for a in tok.get("added_tokens") or []}
    for token, i in model["vocab"].items():
        if i not in added_ids and not set(token) <= alphabet:
            raise ValueError(f"model: vocab token {token!r} has characters outside the "
                             "byte-level alphabet; not a byte-level BPE vocabulary")
    return warnings


def _unreachable_tokens(hf, tok: dict) -> list[str]:
    """Vocab tokens that BPE merges do not rebuild from their own text (see ignore_merges)."""
    if tok["model"].get("ignore_merges"):
        return []  # `tokenizers` looks whole words up first too: same as the op
    added = {a["content"] for a in tok.get("added_tokens") or []}
    bad = []
    for token, i in tok["model"]["vocab"].items():
        if token not in added:
            pieces = hf.model.tokenize(token)
            if len(pieces) != 1 or pieces[0].id != i:
                bad.append(token)
    return bad


def _special_ids_around(hf) -> tuple[list[int], list[int]]:
    """The special ids the post-processor adds before and after any text."""
    def around(text: str) -> tuple[list[int], list[int]]:
        plain = hf.encode(text, add_special_tokens=False).ids
        full = hf.encode(text, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        raise ValueError(f"post_processor: encoding {text!r} does not keep its plain ids")

    prefix, suffix = around("hello world")
    same = [around(text) == (prefix, suffix) for text in ("A longer probe, 123.", " x")]
    if not all(same) or hf.encode("", add_special_tokens=True).ids != prefix + suffix:
        raise ValueError("post_processor: adds other tokens than a fixed prefix/suffix")
    return prefix, suffix


def tokenizer_spec(model_dir: str | os.PathLike, strict: bool = False) -> TokenizerSpec:
    """Checks `<model_dir>/tokenizer.json` and derives what the graphs need.

    Raises:
        ValueError: the ops cannot reproduce the tokenizer (or, with strict, not exactly).
    """
    import tokenizers

    path = Path(model_dir) / "tokenizer.json"
    tok = load_tokenizer_json(path)
    warnings = check_supported(tok)
    hf = tokenizers.Tokenizer.from_file(str(path))
    unreachable = _unreachable_tokens(hf, tok)
    if unreachable:
        warnings.append(f"{len(unreachable)} vocab tokens are not rebuilt by the merges from "
                        f"their own text (e.g. {unreachable[:3]}): a pre-token equal to one "
                        "tokenizes as that single token here, unlike `tokenizers`")
    if strict and warnings:
        raise ValueError("strict: the ONNX tokenizer would not be exact: " + "; ".join(warnings))
    prefix, suffix = _special_ids_around(hf)
    return TokenizerSpec(path.read_text(encoding="utf-8"), Tokenizer(hf).token_bytes(), prefix,
                         suffix, padding_token_id(tok), warnings)


def _model(nodes, name: str, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, producer_name="pagedllm", opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid(CONTRIB, 1)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _const(name: str, values, dtype=np.int64) -> TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def build_preprocessing(spec: TokenizerSpec) -> onnx.ModelProto:
    """text_input STRING [B,1] -> input_ids INT64 [B,max_len], input_lengths INT64 [B,1],
    text_has_nul BOOL [B,1]."""
    id_to_content = {a["id"]: a["content"] for a in json.loads(spec.json_text)["added_tokens"]}
    # NOTE: no bos/eos in this config, so the op adds no special tokens itself: the graph adds the
    # post-processor's prefix/suffix below. tokenizer_class only picks BPE; the regex comes from
    # tokenizer.json ("Llama" would force Llama's own regex).
    config = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": False,
              "add_eos_token": False, "pad_token": id_to_content[spec.pad_id]}
    # NOTE: HfJsonTokenizer (0.15.2) drops a text's last character when the one before it is
    # "<" ("a<b" -> "a<"). Every text therefore gets the padding special token appended: it is
    # split off first, as `tokenizers` splits added tokens, so the ids before it are the text's
    # own; its id stays after the row's length, where padding is.
    # NOTE: the op reads C strings: a NUL would also cut the sentinel off. The graph cuts each
    # text at its first NUL itself, so the op never meets one, and flags the texts it cut
    # (`text_has_nul`: the split made two parts) for the llm step to refuse. An empty column
    # after the split's gives it a first column even when all texts are empty (then it has none).
    sentinel = id_to_content[spec.pad_id]
    inits = [_const("flat_shape", [-1]), _const("sum_axes", [1]), _const("one", [[1]]),
             _const("first", 0), _const("one_part", 1),
             helper.make_tensor("empty", TensorProto.STRING, [1, 1], [b""]),
             _const("column", [1]), _const("axis_1", [1]),
             helper.make_tensor("sentinel", TensorProto.STRING, [1], [sentinel.encode()])]
    nodes = [
        helper.make_node("Reshape", ["text_input", "flat_shape"], ["texts_raw"]),
        helper.make_node("StringSplit", ["texts_raw"], ["nul_parts", "nul_counts"],
                         delimiter="\x00", maxsplit=1),
        helper.make_node("Shape", ["texts_raw"], ["batch"]),
        helper.make_node("Concat", ["batch", "column"], ["column_shape"], axis=0),
        helper.make_node("Expand", ["empty", "column_shape"], ["empty_column"]),
        helper.make_node("Concat", ["nul_parts", "empty_column"], ["parts"], axis=1),
        helper.make_node("Gather", ["parts", "first"], ["texts_cut"], axis=1),
        helper.make_node("Greater", ["nul_counts", "one_part"], ["cut"]),
        helper.make_node("Unsqueeze", ["cut", "axis_1"], ["text_has_nul"]),
        helper.make_node("StringConcat", ["texts_cut", "sentinel"], ["texts"]),
        helper.make_node("HfJsonTokenizer", ["texts"], ["text_ids", "mask"], domain=CONTRIB,
                         tokenizer_vocab=spec.json_text, tokenizer_config=json.dumps(config)),
        helper.make_node("ReduceSum", ["mask", "sum_axes"], ["with_sentinel"], keepdims=1),
        helper.make_node("Sub", ["with_sentinel", "one"], ["text_lengths"]),
    ]
    ids, lengths = "text_ids", "text_lengths"

    def rows(name: str, values: list[int]) -> str:  # [B, len(values)], every row = values
        inits.extend([_const(f"{name}_row", [values]), _const(f"{name}_cols", [len(values)])])
        nodes.extend([helper.make_node("Concat", ["batch", f"{name}_cols"], [f"{name}_shape"],
                                       axis=0),
                      helper.make_node("Expand", [f"{name}_row", f"{name}_shape"], [name])])
        return name

    if spec.prefix_ids:
        inits.append(_const("prefix_len", [[len(spec.prefix_ids)]]))
        nodes += [helper.make_node("Concat", [rows("prefix", spec.prefix_ids), ids],
                                   ["with_prefix"], axis=1),
                  helper.make_node("Add", [lengths, "prefix_len"], ["lengths_prefix"])]
        ids, lengths = "with_prefix", "lengths_prefix"
    if spec.suffix_ids:
        # Rows have different lengths: widen by the suffix, then write it at each row's end.
        n = len(spec.suffix_ids)
        inits += [_const("suffix_offsets", [list(range(n))]), _const("suffix_len", [[n]])]
        nodes += [
            helper.make_node("Concat", [ids, rows("pad", [spec.pad_id] * n)], ["widened"], axis=1),
            helper.make_node("Add", [lengths, "suffix_offsets"], ["suffix_at"]),
            helper.make_node("ScatterElements", ["widened", "suffix_at", rows("suffix",
                                                                              spec.suffix_ids)],
                             ["with_suffix"], axis=1),
            helper.make_node("Add", [lengths, "suffix_len"], ["lengths_suffix"]),
        ]
        ids, lengths = "with_suffix", "lengths_suffix"
    nodes += [helper.make_node("Identity", [ids], ["input_ids"]),
              helper.make_node("Identity", [lengths], ["input_lengths"])]
    return _model(
        nodes, "preprocessing",
        [helper.make_tensor_value_info("text_input", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "max_len"]),
         helper.make_tensor_value_info("input_lengths", TensorProto.INT64, ["batch", 1]),
         helper.make_tensor_value_info("text_has_nul", TensorProto.BOOL, ["batch", 1])],
        inits)


def build_postprocessing(spec: TokenizerSpec) -> onnx.ModelProto:
    """output_ids INT64 [B,n,L] -> text_output STRING [B,n], special tokens skipped.

    Each of a request's n rows (one per completion) decodes alone. Byte-level decoding is joining
    the tokens' bytes and reading them as UTF-8, so the graph is a Gather from a table of each
    token's bytes (b"" for special tokens) and a StringJoin along each row. A table entry may be
    part of a character; the joined row is whole when its ids are.
    """
    # NOTE: not BpeDecoder: in 0.15.2 it reads past the row ends of a [B, n] input with B > 1,
    # and inside a Loop (one row at a time) it crashes ONNX Runtime 1.19 (the NGC container's).
    table = spec.token_bytes
    nodes = [
        helper.make_node("Gather", ["token_bytes", "output_ids"], ["pieces"], axis=0),
        helper.make_node("StringJoin", ["pieces", "separator", "row_axis"], ["text_output"],
                         domain=CONTRIB),
    ]
    return _model(
        nodes, "postprocessing",
        [helper.make_tensor_value_info("output_ids", TensorProto.INT64, ["batch", "n", "len"])],
        [helper.make_tensor_value_info("text_output", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor("token_bytes", TensorProto.STRING, [len(table)], table),
         helper.make_tensor("separator", TensorProto.STRING, [], [b""]),
         _const("row_axis", 2)])


def import_extensions():
    """onnxruntime_extensions, imported without its side effect on the environment.

    NOTE: importing it sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in os.environ, and every
    process started after that (make serve's front door, the load generator) parsed protobuf in
    pure Python: a third of the front door's time under load went to decoding Triton's gRPC
    responses. The variable is put back as it was.
    """
    key = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
    before = os.environ.get(key)
    import onnxruntime_extensions

    if before is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = before
    return onnxruntime_extensions


def session(model: onnx.ModelProto):
    """An ONNX Runtime session for `model`, with the onnxruntime-extensions ops registered."""
    import onnxruntime as ort

    onnxruntime_extensions = import_extensions()
    options = ort.SessionOptions()
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def verify(model_dir: str | os.PathLike, spec: TokenizerSpec, pre: onnx.ModelProto,
           post: onnx.ModelProto) -> None:
    """Runs the probe texts through both models; ValueError where `tokenizers` disagrees."""
    tokenizer = Tokenizer.from_dir(model_dir)
    added = [a["content"] for a in json.loads(spec.json_text)["added_tokens"]]
    texts = PROBE_TEXTS + [f"a{s}b {s}" for s in added[:4]]  # added tokens written in text
    ids, lengths, _ = session(pre).run(None, {"text_input": np.array(texts, object).reshape(-1, 1)})
    for text, row, n in zip(texts, ids, lengths[:, 0]):
        want = tokenizer.encode(text)
        if row[:n].tolist() != want:
            raise ValueError(f"verify: the ONNX tokenizer gives {row[:n].tolist()} for {text!r}, "
                             f"tokenizers {want}: this tokenizer is not supported")
    decode = session(post)
    for text, row, n in zip(texts, ids, lengths[:, 0]):
        got = decode.run(None, {"output_ids": row[None, None, :n]})[0][0, 0] if n else ""
        if got != tokenizer.decode(row[:n].tolist()):
            raise ValueError(f"verify: the ONNX detokenizer gives {got!r} for {text!r}")


def export(model_dir: str | os.PathLike, out_pre: str | os.PathLike,
           out_post: str | os.PathLike, strict: bool = False) -> TokenizerSpec:
    """Builds, verifies and writes both models; returns the spec (its warnings included).

    Raises:
        ValueError: the tokenizer is not supported (see the module docstring).
    """
    spec = tokenizer_spec(model_dir, strict=strict)
    for w in spec.warnings:
        log.warning("%s: %s", model_dir, w)
    pre, post = build_preprocessing(spec), build_postprocessing(spec)
    verify(model_dir, spec, pre, post)
    for model, out in ((pre, out_pre), (post, out_post)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, os.fspath(out))
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory with tokenizer.json")
    parser.add_argument("--out-pre", required=True, help="where to write the preprocessing model")
    parser.add_argument("--out-post", required=True, help="where to write the postprocessing model")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the known differences too (NFC, unreachable merges)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        spec = export(args.model, args.out_pre, args.out_post, strict=args.strict)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s and %s (prefix ids %s, suffix ids %s, pad id %d)", args.out_pre,
             args.out_post, spec.prefix_ids, spec.suffix_ids, spec.pad_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

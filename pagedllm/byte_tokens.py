"""The ids a stateless detokenizer needs from a byte-level BPE vocabulary.

The `postprocessing` model decodes each group of ids it gets on its own. The `llm` step therefore
sends only groups whose bytes form complete UTF-8, and two kinds of filler ids:

- single-byte tokens: a byte-level BPE vocabulary (GPT-2, Llama-3, Qwen2) holds one token for each
  of the 256 bytes, so any text fragment (e.g. the part of a token before a stop string) can be
  sent as those tokens and decodes back to exactly its bytes;
- a padding id: a special token, which the detokenizer skips, fills the rows of a batch to one
  length.

Pure tokenizer logic on the parsed tokenizer.json: no Triton, no `tokenizers` import.
"""
from __future__ import annotations

import json
import os
from typing import Any

TokenizerJson = dict[str, Any]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that stands for it in the vocab.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7f-0xa0, 0xad)
    take the code points from U+0100 on, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return dict(sorted(table.items()))


def load_tokenizer_json(path: str | os.PathLike) -> TokenizerJson:
    """Parses `path`: a tokenizer.json file, or a model directory that holds one.

    Raises:
        ValueError: no such file, or it is not JSON.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer_json: {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer_json: {path} is not JSON: {e}") from None


def _as_json(tokenizer_json: TokenizerJson | str | os.PathLike) -> TokenizerJson:
    if isinstance(tokenizer_json, dict):
        return tokenizer_json
    return load_tokenizer_json(tokenizer_json)


def byte_token_ids(tokenizer_json: TokenizerJson | str | os.PathLike) -> list[int]:
    """The id of each byte's single-byte token: `ids[b]` decodes to `bytes([b])`.

    Args:
        tokenizer_json: the parsed tokenizer.json, or its path (file or model directory).

    Raises:
        ValueError: the model is not byte-level BPE, or its vocab lacks a byte's token.
    """
    tok = _as_json(tokenizer_json)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError("tokenizer_json: byte tokens need a byte-level BPE model (GPT-2 style); "
                         f"got model type {model.get('type')!r}, "
                         f"byte_fallback={model.get('byte_fallback')!r}")
    vocab: dict[str, int] = model.get("vocab") or {}
    ids = []
    for b, char in bytes_to_unicode().items():
        if char not in vocab:
            raise ValueError(f"tokenizer_json: the vocab has no token for byte 0x{b:02x} "
                             f"({char!r}): not a byte-level BPE vocabulary")
        ids.append(vocab[char])
    return ids


def special_token_ids(tokenizer_json: TokenizerJson | str | os.PathLike) -> list[int]:
    """Ids of the added tokens marked special, sorted: what `skip_special_tokens` leaves out."""
    tok = _as_json(tokenizer_json)
    return sorted(t["id"] for t in tok.get("added_tokens") or [] if t.get("special"))


def padding_token_id(tokenizer_json: TokenizerJson | str | os.PathLike) -> int:
    """A special token id to pad id rows with: the detokenizer skips it, so it decodes to "".

    The lowest special id (GPT-2's `<|endoftext|>`, Llama-3's `<|begin_of_text|>`). Any special
    id would do; the ONNX models use this one too.

    Raises:
        ValueError: the tokenizer has no special token.
    """
    special = special_token_ids(tokenizer_json)
    if not special:
        raise ValueError("tokenizer_json: no added token is marked special, so none can pad")
    return special[0]

"""The model's tokenizer: Hugging Face's Rust `tokenizers`, loaded from tokenizer.json.

The engine uses the Rust tokenizer directly rather than transformers: it loads in milliseconds,
decodes batches without the GIL, and is what the ONNX tokenizer models are built from too.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import tokenizers

from pagedllm.byte_tokens import bytes_to_unicode


class Tokenizer:
    """Encodes text to token ids and decodes ids back, as the checkpoint's tokenizer.json says.

    `encode` adds the tokenizer's own special tokens (its post-processor, e.g. Llama's BOS), as
    `AutoTokenizer(text)["input_ids"]` does. `decode` is the plain Rust decode, without
    transformers' `clean_up_tokenization_spaces`: that rewrite depends on the text around it, so a
    streamed text would no longer equal the text decoded at once.

    Args:
        tokenizer: a loaded `tokenizers.Tokenizer`.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self._tok = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.all_special_ids: list[int] = sorted(
            i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> Tokenizer:
        """Loads `<model_dir>/tokenizer.json`.

        Raises:
            ValueError: the file is missing or is not a tokenizer.json.
        """
        path = os.path.join(os.fspath(model_dir), "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"model_dir has no tokenizer.json: {path} does not exist")
        try:
            return cls(tokenizers.Tokenizer.from_file(path))
        except Exception as e:  # the Rust side raises plain Exception on a malformed file
            raise ValueError(f"cannot load tokenizer {path}: {e}") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the special tokens the tokenizer adds itself."""
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` alone, without the tokenizer's special tokens (bad_words)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text, in one call to the Rust side."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=True)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; an incomplete UTF-8 character decodes to U+FFFD."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]],
                     skip_special_tokens: bool = True) -> list[str]:
        """`decode` of each sequence, in one call to the Rust side."""
        # NOTE: the Rust side takes lists and tuples as they are; the per-step detokenizer relies
        # on that to pass list slices without copying them again.
        batch = [ids if isinstance(ids, (list, tuple)) else list(ids) for ids in batch]
        return self._tok.decode_batch(batch,
                                      skip_special_tokens=skip_special_tokens)

    def token_bytes(self, skip_special_tokens: bool = True) -> list[bytes] | None:
        """Each token id's bytes, when decoding is just joining them (byte-level BPE); else None.

        Byte-level BPE (GPT-2, Llama-3, Qwen2) decodes by concatenating per-token bytes and then
        reading UTF-8, so a streaming decoder needs no window: see detokenizer.py. Mirrors the Rust
        ByteLevel decoder: a token whose characters all map back to bytes gives those bytes, any
        other (an added token) its own UTF-8; skipped special tokens give nothing.
        """
        if not (isinstance(self._tok.decoder, tokenizers.decoders.ByteLevel)
                and isinstance(self._tok.model, tokenizers.models.BPE)
                and not self._tok.model.byte_fallback):
            return None
        char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
        table = [b""] * self.vocab_size
        special = set(self.all_special_ids)
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if skip_special_tokens and i in special:
                continue
            try:
                table[i] = bytes(char_to_byte[c] for c in token)
            except KeyError:
                table[i] = token.encode("utf-8")
        return table

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (e.g. "<|endoftext|>"), or None when the vocabulary lacks it."""
        return self._tok.token_to_id(token)

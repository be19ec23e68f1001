"""The checkpoint's tokenizer.json and tokenizer_config.json, for what the service must know itself.

Triton tokenizes every text prompt (the ensemble's preprocessing step); the service needs the
tokenizer only for three things: decoding the `llm` model's output ids when a prompt comes as
token ids (that route bypasses the ensemble's detokenizer), echoing such a prompt as text, and
knowing whether the tokenizer adds a BOS by itself (chat_template.py strips a rendered one). It
uses Hugging Face's Rust `tokenizers`, as the engine does, never transformers.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import tokenizers


def special_token_text(value) -> str | None:
    """A special token entry of tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class ModelTokenizer:
    """tokenizer.json plus tokenizer_config.json of one model directory.

    Args:
        model_dir: the checkpoint directory.

    Raises:
        ValueError: tokenizer.json is missing or unreadable, or tokenizer_config.json is not JSON.
    """

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"model_dir has no tokenizer.json: {path} does not exist")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception on a malformed file
            raise ValueError(f"cannot load tokenizer {path}: {e}") from None
        config_path = model_dir / "tokenizer_config.json"
        try:
            self.config: dict = json.loads(config_path.read_text()) if config_path.is_file() \
                else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON: {e}") from None
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)

    def special_tokens(self) -> dict[str, str]:
        """bos_token, eos_token, ... as text: what transformers passes to a chat template (the
        ones that are set)."""
        out: dict[str, str] = {}
        for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                     "cls_token", "mask_token"):
            text = special_token_text(self.config.get(name))
            if text is not None:
                out[name] = text
        extra = [special_token_text(t) for t in self.config.get("additional_special_tokens") or []]
        if any(extra):
            out["additional_special_tokens"] = [t for t in extra if t]
        return out

    def adds_bos(self) -> bool:
        """Whether encoding (with special tokens, as the ensemble encodes) puts the BOS in front."""
        bos = special_token_text(self.config.get("bos_token"))
        bos_id = self._tok.token_to_id(bos) if bos else None
        if bos_id is None:
            return False
        return self._tok.encode("x", add_special_tokens=True).ids[:1] == [bos_id]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text` with the tokenizer's own special tokens (the ensemble's encoding)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens skipped (as the ensemble's detokenizer does)."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

"""Incremental detokenization: the text each new token adds, exactly, for any tokenizer.

Decoding each new token alone loses leading spaces (sentencepiece strips a first token's space)
and garbles characters split across tokens. vLLM's prefix/read offsets fix both: decode a short
window that ends at the new tokens twice, with and without them, and emit the difference.

    all ids:  [ ... prompt ... | out0 out1 ... | new tokens ]
                     ^prefix_offset  ^read_offset       ^len(ids)
    prefix_text = decode(ids[prefix_offset:read_offset])
    full_text   = decode(ids[prefix_offset:])
    delta       = full_text[len(prefix_text):]

The tokens in [prefix_offset, read_offset) are context only: already emitted, decoded again so the
new tokens decode as they would inside the whole text. A delta whose text ends in U+FFFD (an
incomplete UTF-8 character) is held back, offsets unchanged, until a later token completes it.

Byte-level BPE tokenizers (GPT-2, Llama-3, Qwen2) take a shortcut: their text is the UTF-8 reading
of the tokens' bytes joined, so each request keeps an incremental UTF-8 decoder and each step feeds
it the new tokens' bytes. No window, no Rust call: the step's hot loop in servers and benchmarks.
"""
from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

from pagedllm.tokenizer import Tokenizer

_PROMPT_CONTEXT = 5  # prompt tokens decoded as context before the first output token (vLLM's)
_REPLACEMENT = "\ufffd"


@dataclass
class DetokState:
    """Where one request's detokenization stands.

    Attributes:
        prefix_offset: start of the context window, an index into the request's ALL token ids
            (prompt + output).
        read_offset: end of what was already emitted (same indexing).
        skip_special_tokens: leave special tokens out of the text.
    """

    prefix_offset: int
    read_offset: int
    skip_special_tokens: bool = True
    byte_level: bool = False   # the byte-level shortcut: `pending` holds an incomplete character
    pending: bytes = b""


class IncrementalDetokenizer:
    """Turns each request's new tokens into text deltas, for a batch of requests at a time.

    Invariant (byte-level BPE): the deltas of a request, concatenated with its flush(), equal
    tokenizer.decode(output ids). For sentencepiece tokenizers the first delta also keeps the
    leading space that decoding the output alone would strip, as a full decode of the prompt and
    output does.

    NOTE: known limit, shared with vLLM: a byte-fallback decoder turns a run of byte tokens that is
    not valid UTF-8 into one U+FFFD per byte, valid characters in the run included. Text already
    streamed is not taken back, so after invalid bytes a stream can differ from a full decode.

    Args:
        tokenizer: the model's tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        # NOTE: a one-token window decodes the same wherever it sits, and while a request emits
        # a token per step its context window is that one token: caching these texts (at most
        # one per vocabulary entry) halves the decodes of a step.
        self._one_token_text: dict[bool, dict[int, str]] = {True: {}, False: {}}
        self._token_bytes = {skip: tokenizer.token_bytes(skip) for skip in (True, False)}
        # A token whose bytes are whole characters on their own decodes alike anywhere (after
        # complete text): most tokens. None where the bytes are a partial or invalid character.
        self._token_text = {skip: None if table is None else [_complete_text(b) for b in table]
                            for skip, table in self._token_bytes.items()}

    def new_state(self, prompt_token_ids: Sequence[int],
                  skip_special_tokens: bool = True) -> DetokState:
        """State of a request that has emitted nothing yet; a few prompt tokens serve as context.

        The context window starts at a character boundary: one starting inside a multi-byte
        character decodes to U+FFFD there, and a byte-fallback decoder (Llama-2) then turns the
        whole run of byte tokens into U+FFFD, the new tokens' bytes included.
        """
        n = len(prompt_token_ids)
        if self._token_bytes[skip_special_tokens] is not None:
            return DetokState(n, n, skip_special_tokens, byte_level=True)
        prefix = max(n - _PROMPT_CONTEXT, 0)
        if prefix > 0:
            # A UTF-8 character has at most 3 continuation bytes, so at most 3 steps back.
            starts = list(range(prefix, max(prefix - 3, 0) - 1, -1))
            texts = self.tokenizer.decode_batch([prompt_token_ids[s:n] for s in starts],
                                                skip_special_tokens=skip_special_tokens)
            prefix = next((s for s, t in zip(starts, texts) if not t.startswith(_REPLACEMENT)),
                          prefix)
        return DetokState(prefix, n, skip_special_tokens)

    def step(self, states: list[DetokState], all_token_ids: list[Sequence[int]]) -> list[str]:
        """Text added by each request's tokens since its last step; advances the states.

        All decodes of the call go to the Rust side in one decode_batch per skip_special_tokens
        value; Python only slices strings.

        Args:
            states: one state per request, updated in place.
            all_token_ids: each request's prompt + output ids so far.

        Returns:
            One delta per request ("" when nothing new is complete yet).
        """
        if len(states) != len(all_token_ids):
            raise ValueError(f"all_token_ids must have one entry per state ({len(states)}), "
                             f"got {len(all_token_ids)}")
        deltas = [""] * len(states)
        rows: dict[bool, list[int]] = {True: [], False: []}
        for i, (state, ids) in enumerate(zip(states, all_token_ids)):
            n = len(ids)
            if n <= state.read_offset:
                continue
            if state.byte_level:
                skip = state.skip_special_tokens
                text = self._token_text[skip][ids[-1]] if n == state.read_offset + 1 else None
                if text is not None and not state.pending:
                    deltas[i] = text
                else:
                    table = self._token_bytes[skip]
                    data = state.pending + b"".join(table[t] for t in ids[state.read_offset:])
                    deltas[i], used = codecs.utf_8_decode(data, "replace", False)
                    state.pending = data[used:]
                state.read_offset = n
            else:
                rows[state.skip_special_tokens].append(i)
        for skip, group in rows.items():
            if group:
                self._step_group(skip, group, states, all_token_ids, deltas)
        return deltas

    def _step_group(self, skip: bool, group: list[int], states: list[DetokState],
                    all_token_ids: list[Sequence[int]], deltas: list[str]) -> None:
        """Decodes, in one decode_batch, the windows of requests sharing skip_special_tokens."""
        cache = self._one_token_text[skip]
        windows = []
        prefix_texts: list[str | None] = []  # None: the context window is decoded too, next
        for i in group:
            state, ids = states[i], all_token_ids[i]
            p, r = state.prefix_offset, state.read_offset
            windows.append(ids[p:])
            text = cache.get(ids[p]) if r - p == 1 else None
            if text is None:
                windows.append(ids[p:r])
            prefix_texts.append(text)
        texts = self.tokenizer.decode_batch(windows, skip_special_tokens=skip)
        k = 0
        for i, prefix_text in zip(group, prefix_texts):
            state, full_text = states[i], texts[k]
            k += 1
            if prefix_text is None:
                prefix_text = texts[k]
                k += 1
                if state.read_offset - state.prefix_offset == 1:
                    cache[all_token_ids[i][state.prefix_offset]] = prefix_text
            # Inlined _advance (this loop runs once per running request per step).
            if len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT):
                state.prefix_offset = state.read_offset
                state.read_offset = len(all_token_ids[i])
                deltas[i] = full_text[len(prefix_text):]

    def flush(self, state: DetokState, all_token_ids: Sequence[int]) -> str:
        """At a request's end: the text still held back, incomplete characters as U+FFFD."""
        if state.byte_level:
            text = self.step([state], [all_token_ids])[0]
            rest, state.pending = codecs.utf_8_decode(state.pending, "replace", True)[0], b""
            return text + rest
        if len(all_token_ids) <= state.read_offset:
            return ""
        prefix_text, full_text = self.tokenizer.decode_batch(
            [all_token_ids[state.prefix_offset:state.read_offset],
             all_token_ids[state.prefix_offset:]],
            skip_special_tokens=state.skip_special_tokens)
        return _advance(state, prefix_text, full_text, len(all_token_ids), final=True)


def _advance(state: DetokState, prefix_text: str, full_text: str, num_ids: int,
             final: bool) -> str:
    """Emits full_text past prefix_text unless it ends mid-character; moves the window on."""
    if len(full_text) <= len(prefix_text):
        return ""
    if not final and full_text.endswith(_REPLACEMENT):
        return ""
    state.prefix_offset = state.read_offset
    state.read_offset = num_ids
    return full_text[len(prefix_text):]


def _complete_text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None

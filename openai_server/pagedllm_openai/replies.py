"""Triton's streamed responses as Replies: what the front door reads once per token per request.

A response of `ensemble` (or of `llm`, whose output_ids the caller's `decode` turns into text)
carries per completion its new text, finish reason, token count and logprobs, plus the prompt's
token count and the request's cancel_token. `parse_reply` reads them straight from the response's
raw contents; `parse_reply_generic` through tritonclient's `InferResult.as_numpy`, for responses
that carry typed contents instead (and as the reference the fast reader is tested against).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Reply:
    """One Triton response; every list has one entry per completion (n)."""

    texts: list[str]
    finish_reasons: list[str | None]   # None until that completion ends
    num_output_tokens: list[int]       # tokens this response carries
    logprobs: list[list[dict] | None]  # per new token: {token id: {logprob, rank, decoded_token}}
    num_input_tokens: int
    cancel_token: str

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.finish_reasons)

    def merged(self, later: "Reply") -> "Reply":
        """This reply and the one after it as one: texts and logprobs joined, tokens added."""
        def join(a, b):
            return None if a is None and b is None else (a or []) + (b or [])

        return Reply(texts=[a + b for a, b in zip(self.texts, later.texts)],
                     finish_reasons=[b if b is not None else a
                                     for a, b in zip(self.finish_reasons, later.finish_reasons)],
                     num_output_tokens=[a + b for a, b in zip(self.num_output_tokens,
                                                              later.num_output_tokens)],
                     logprobs=[join(a, b) for a, b in zip(self.logprobs, later.logprobs)],
                     num_input_tokens=self.num_input_tokens or later.num_input_tokens,
                     cancel_token=self.cancel_token or later.cancel_token)


def parse_reply(result, decode: Callable[[Sequence[int]], str] | None = None) -> Reply:
    """A Reply from one response; `decode` turns the llm model's output_ids rows into text.

    NOTE: once per streamed token per request: the front door's hottest function. Outputs are
    read straight from the response's raw contents (a BYTES tensor is 4-byte little-endian
    lengths, each followed by its bytes), not through InferResult.as_numpy, which took 23 us a
    response for its six lookups and object arrays.
    """
    response = result.get_response()
    raw = response.raw_output_contents
    if len(raw) != len(response.outputs):  # contents in typed fields: the general reader
        return parse_reply_generic(result, decode)
    fields = {out.name: (out.datatype, raw[i]) for i, out in enumerate(response.outputs)}

    def strings(name: str) -> list[str]:
        kind, buf = fields.get(name, ("BYTES", b""))
        return _strings(buf)

    def ints(name: str) -> list[int]:
        kind, buf = fields.get(name, ("UINT32", b""))
        if len(buf) == 4 and kind == "UINT32":  # the usual one completion
            return [int.from_bytes(buf, "little")]
        return np.frombuffer(buf, dtype=_NUMERIC[kind]).tolist() if buf else []

    texts = _decoded(result, decode) if decode is not None else strings("text_output")
    return _reply(texts, strings("finish_reason"), strings("logprobs"), ints("num_output_tokens"),
                  ints("num_input_tokens"), strings("cancel_token"))


def _decoded(result, decode: Callable[[Sequence[int]], str]) -> list[str]:
    """The llm model's output_ids rows as text."""
    ids = result.as_numpy("output_ids")
    rows = ids.reshape(-1, ids.shape[-1]) if ids is not None else []
    return [decode(row.tolist()) for row in rows]


def _reply(texts: list[str], reasons: list[str], logprobs: list[str], num_output_tokens: list[int],
           num_input_tokens: list[int], cancel_token: list[str]) -> Reply:
    """A Reply from the outputs as read ("None" = no finish reason yet, "null" = no logprobs)."""
    parsed = [None if v == "null" else json.loads(v) for v in logprobs]
    return Reply(texts=texts,
                 finish_reasons=[None if r == "None" else r for r in reasons],
                 num_output_tokens=num_output_tokens,
                 logprobs=parsed or [None] * len(texts),
                 num_input_tokens=num_input_tokens[0] if num_input_tokens else 0,
                 cancel_token=cancel_token[0] if cancel_token else "")


_NUMERIC = {"UINT32": "<u4", "INT32": "<i4", "UINT64": "<u8", "INT64": "<i8"}


def _strings(buf: bytes) -> list[str]:
    """The elements of a raw BYTES tensor, as text."""
    out, i, end = [], 0, len(buf)
    while i < end:
        n = int.from_bytes(buf[i:i + 4], "little")
        out.append(buf[i + 4:i + 4 + n].decode("utf-8"))
        i += 4 + n
    return out


def parse_reply_generic(result, decode: Callable[[Sequence[int]], str] | None) -> Reply:
    """parse_reply through InferResult.as_numpy (a response whose contents are not raw)."""
    def flat(name: str) -> np.ndarray:
        array = result.as_numpy(name)
        return np.zeros(0) if array is None else array.reshape(-1)

    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    texts = (_decoded(result, decode) if decode is not None
             else [text(v) for v in flat("text_output")])
    return _reply(texts, [text(v) for v in flat("finish_reason")],
                  [text(v) for v in flat("logprobs")],
                  [int(v) for v in flat("num_output_tokens")],
                  [int(v) for v in flat("num_input_tokens")],
                  [text(v) for v in flat("cancel_token")])


def is_final(result) -> bool:
    param = result.get_response().parameters.get("triton_final_response")
    return bool(param is not None and param.bool_param)

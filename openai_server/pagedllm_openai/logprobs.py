"""Triton's logprobs JSON -> OpenAI's two logprobs shapes (completions' and chat's).

Triton sends, per completion and response, a list with one entry per new token:
`{"<token id>": {"logprob", "rank", "decoded_token"}, ...}`, the sampled token first, then the
top alternatives (vLLM's order; rank 1 = most likely). As vLLM does, logprobs are floored at
-9999.0 (JSON has no -inf).
"""
from __future__ import annotations

from pagedllm_openai.schemas import (ChatLogprobs, ChatTokenLogprob, CompletionLogprobs,
                                     TopLogprob)

FLOOR = -9999.0


def _logprob(entry: dict) -> float:
    return max(float(entry["logprob"]), FLOOR)


def _sampled(token: dict) -> dict:
    """The sampled token's entry: the first (Triton writes it first)."""
    return next(iter(token.values()))


def _by_rank(token: dict) -> list[dict]:
    return sorted(token.values(), key=lambda e: e["rank"])


def completion_logprobs(tokens: list[dict], text_offset: int) -> CompletionLogprobs:
    """Completions' logprobs for `tokens`, whose text starts at character `text_offset` of the
    choice's text (what was sent before, plus an echoed prompt)."""
    out = CompletionLogprobs()
    for token in tokens:
        sampled = _sampled(token)
        text = sampled["decoded_token"]
        out.tokens.append(text)
        out.token_logprobs.append(_logprob(sampled))
        # NOTE: keyed by text, as OpenAI's shape is: two ids that decode alike share one key
        # (the more likely one's logprob wins, as in vLLM).
        top: dict[str, float] = {}
        for entry in reversed(_by_rank(token)):
            top[entry["decoded_token"]] = _logprob(entry)
        out.top_logprobs.append(dict(sorted(top.items(), key=lambda kv: -kv[1])))
        out.text_offset.append(text_offset)
        text_offset += len(text)
    return out


def _top(entry: dict) -> TopLogprob:
    text = entry["decoded_token"]
    return TopLogprob(token=text, logprob=_logprob(entry),
                      bytes=list(text.encode("utf-8", "replace")))


def chat_logprobs(tokens: list[dict], top_logprobs: int) -> ChatLogprobs:
    """Chat's logprobs for `tokens`: each sampled token with its `top_logprobs` most likely."""
    content = []
    for token in tokens:
        sampled = _top(_sampled(token))
        top = [_top(e) for e in _by_rank(token)[:top_logprobs]]
        content.append(ChatTokenLogprob(**sampled.model_dump(), top_logprobs=top))
    return ChatLogprobs(content=content)

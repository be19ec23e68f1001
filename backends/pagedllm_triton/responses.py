"""One request's responses as vllm_backend shapes them: the `llm` model's output arrays.

Pure numpy, no Triton: model.py turns the arrays into pb_utils tensors. A request asking for n
completions gets, in every response, one element per completion (vllm_backend's layout):

    output_ids          INT64  [1, n, L]  ids that decode, alone, to each completion's new text
                                          (rows padded with an id that decodes to nothing); the
                                          ensemble's postprocessing turns them into text_output [n]
    finish_reason       BYTES  [1, n]     "stop" | "length" | "abort" on a completion's last
                                          response, else "None" (vllm_backend sends str(None))
    cumulative_logprob  FP32   [1, n]     running sum of the sampled tokens' logprobs (0 unless
                                          sampling_parameters asks for logprobs: vllm_backend would
                                          send NaN, which perf_analyzer's JSON export cannot write)
    logprobs            BYTES  [1, n]     JSON per completion: a list with one entry per new token,
                                          {"<token id>": {"logprob", "rank", "decoded_token"}},
                                          the sampled token's first (vLLM's order), or
                                          "null" unless sampling_parameters asks for logprobs
    num_input_tokens    UINT32 [1, 1]     prompt tokens
    num_output_tokens   UINT32 [1, n]     tokens this response carries (all of them when not
                                          streaming)
    cancel_token        BYTES  [1, 1]     the request's own token: a cancel must name it

Streaming sends each completion's new text per response; otherwise one response carries the
whole text, after the prompt when it asked for the prompt (exclude_input_in_output false).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from pagedllm.outputs import StreamDelta
from pagedllm_triton.text_ids import TextIds


@dataclass
class Sequence:
    """One completion's progress, as its responses have told it."""

    pending: list = field(default_factory=list)  # TextIds' unsent pieces
    ids: list[int] = field(default_factory=list)  # not streaming: every id so far
    logprobs: list = field(default_factory=list)  # not streaming: every entry so far
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    num_output_tokens: int = 0


@dataclass
class RequestResponses:
    """What one live request needs to build its responses.

    Attributes:
        text_ids: ids-for-text of the request's skip_special_tokens setting.
        names: token id -> its text, for logprobs' decoded_token (special tokens spelled out).
        stream: one response per drain of deltas, or one in the end.
        n: completions.
        want_logprobs: sampling_parameters asked for logprobs.
        prompt_ids: ids to put before the text of a non-streamed response (its prompt), or [].
        num_input_tokens: prompt tokens.
        cancel_token: the request's token.
    """

    text_ids: TextIds
    names: TextIds
    stream: bool
    n: int
    want_logprobs: bool
    prompt_ids: list[int]
    num_input_tokens: int
    cancel_token: str
    sequences: list[Sequence] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sequences = [Sequence() for _ in range(self.n)]

    def update(self, deltas: list[StreamDelta]) -> dict[str, np.ndarray] | None:
        """Takes this drain's deltas (at most one per sequence); the response to send, or None.

        None when nothing is worth a response yet: a non-streamed request before its end, or a
        stream whose deltas carry no text, no tokens and no end.
        """
        new_ids: list[list[int]] = [[] for _ in range(self.n)]
        new_logprobs: list[list] = [[] for _ in range(self.n)]
        new_tokens = [0] * self.n
        for d in deltas:
            seq = self.sequences[d.index]
            ids = self.text_ids.ids_for(seq.pending, d.token_ids, d.text)
            entries = [self._entry(lp, t) for t, lp in zip(d.token_ids, d.logprobs or ())]
            if d.logprobs:
                seq.cumulative_logprob += sum(lp[t] for t, lp in zip(d.token_ids, d.logprobs))
            count = d.num_output_tokens - seq.num_output_tokens
            seq.num_output_tokens = d.num_output_tokens
            if d.finish_reason is not None:
                seq.finish_reason = d.finish_reason
            if self.stream:
                new_ids[d.index], new_logprobs[d.index], new_tokens[d.index] = ids, entries, count
            else:
                seq.ids.extend(ids)
                seq.logprobs.extend(entries)
        finished = any(d.finished for d in deltas)
        if not self.stream:
            if not finished:
                return None
            new_ids = [self.prompt_ids + s.ids for s in self.sequences]
            new_logprobs = [s.logprobs for s in self.sequences]
            new_tokens = [s.num_output_tokens for s in self.sequences]
        elif not finished and not any(new_ids) and not any(new_tokens):
            return None
        return self._arrays(new_ids, new_logprobs, new_tokens)

    def _entry(self, logprobs: dict[int, float], sampled: int) -> dict[str, dict]:
        """One token's logprobs as vllm_backend writes them (rank: 1 = most likely).

        The sampled token comes first, as in vLLM's logprobs dicts (the sampled token, then the
        top ones): a client reads which token was sampled from the order, since the rank of a
        sampled token need not be 1.
        """
        ranked = sorted(logprobs.items(), key=lambda kv: -kv[1])
        entries = {str(t): {"logprob": lp, "rank": i + 1, "decoded_token": self.names.token_text(t)}
                   for i, (t, lp) in enumerate(ranked)}
        first = str(sampled)
        return {first: entries[first], **entries} if first in entries else entries

    def _arrays(self, ids: list[list[int]], logprobs: list[list], tokens: list[int]
                ) -> dict[str, np.ndarray]:
        width = max(1, max(len(row) for row in ids))
        pad = self.text_ids.empty_id
        output_ids = np.full((1, self.n, width), pad, dtype=np.int64)
        for i, row in enumerate(ids):
            output_ids[0, i, :len(row)] = row
        seqs = self.sequences
        return {
            "output_ids": output_ids,
            "finish_reason": np.array([[(s.finish_reason or "None").encode() for s in seqs]],
                                      dtype=np.object_),
            "cumulative_logprob": np.array([[s.cumulative_logprob for s in seqs]], np.float32),
            "logprobs": np.array([[json.dumps(lp).encode() if self.want_logprobs else b"null"
                                   for lp in logprobs]], dtype=np.object_),
            "num_input_tokens": np.array([[self.num_input_tokens]], np.uint32),
            "num_output_tokens": np.array([tokens], np.uint32),
            "cancel_token": np.array([[self.cancel_token.encode()]], dtype=np.object_),
        }

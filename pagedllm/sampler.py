"""Turns one step's logits into one token per request, and brings the tokens to the host.

The order follows vLLM: a constrained row's grammar bitmask first, then logprobs (from the logits
as the grammar left them), forbidden tokens, allowed_token_ids and logit_bias, penalties, and
either argmax (greedy rows) or temperature -> top_k -> top_p -> min_p -> a random draw.

Random draws use the exponential-race trick (argmax of probs / q with q ~ Exp(1)), so each row
needs exactly `vocab` random numbers. A row with its own generator draws them from it alone:
a seeded request samples the same tokens whatever else is in the batch and wherever it sits.

With async scheduling the sampled tokens stay on the device for the next step's inputs, and go
to the host through two pinned buffers in turn (`SampleHandle`): the engine reads step N's
tokens while step N+1's copy runs. A row whose last output token is still on the device reads
it there for its penalties (`SamplingRow.pending_source`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pagedllm.layers.token_bitmask import apply_token_bitmasks
from pagedllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagedllm.request import Request


@dataclass
class SamplingRow:
    """What the sampler needs to know about one request this step.

    Attributes:
        params: the request's sampling parameters.
        prompt_token_ids: the prompt (repetition penalty looks at it).
        output_token_ids: tokens generated so far (all three penalties look at them).
        generator: the request's own generator when params.seed is set (on the sampler's device;
            see Sampler.make_generator), else None to use the sampler's shared one.
        suppress_token_ids: ids forbidden this step (`sampling_rows` sets EOS + stop_token_ids while
            fewer than min_tokens were generated). Ids outside the vocabulary are ignored.
        pending_source: with async scheduling, the last output token may still be on the device:
            its index in the previous launch's sampled tokens (the penalties read it there); -1
            when output_token_ids holds every output token.
        token_bitmask: the tokens the request's grammar allows this step (structured outputs:
            int32 [ceil(vocab / 32)], see token_bitmask.py), else None.
    """

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None = None
    suppress_token_ids: Sequence[int] = ()
    pending_source: int = -1
    token_bitmask: torch.Tensor | None = None


def sampling_rows(requests: list[Request]) -> list[SamplingRow]:
    """The SamplingRow of each request that samples this step, brought up to date.

    Penalties, min_tokens, bad words and a grammar's bitmask look at the tokens generated so far. With async scheduling a
    request's last output token may still be on the device (`num_pending`): the penalties read
    it there (`pending_source`: its row in the previous launch's tokens), and it counts towards
    min_tokens. Call before the scheduler's `update_after_step`, which moves both.
    """
    return [_refresh(r) if r.state.row_varies else r.state.sampling_row for r in requests]


def _refresh(r: Request) -> SamplingRow:
    row = r.state.sampling_row
    p = r.sampling_params
    if uses_penalties(p):
        row.output_token_ids = r.all_token_ids[r.num_prompt_tokens:]
        row.pending_source = r.sample_row if r.num_pending else -1
    if r.num_output_tokens + r.num_pending < p.min_tokens:
        row.suppress_token_ids = tuple(p.stop_token_ids) + (() if p.ignore_eos else r.eos_token_ids)
    elif row.suppress_token_ids:
        row.suppress_token_ids = ()
    if r.state.bad_words_ids:  # (the engine reads such a row's last token back first)
        out = r.all_token_ids[r.num_prompt_tokens:]
        row.suppress_token_ids = tuple(row.suppress_token_ids) + tuple(
            w[-1] for w in r.state.bad_words_ids
            if len(w) == 1 or tuple(out[len(out) - len(w) + 1:]) == w[:-1])
    if r.state.matcher is not None:
        if r.num_pending:  # (the engine reads a constrained row's token back before this)
            raise RuntimeError(f"request {r.request_id}: a constrained row with a pending token")
        row.token_bitmask = r.state.matcher.fill_mask()
    return row


def uses_penalties(p: SamplingParams) -> bool:
    return (p.repetition_penalty != 1.0 or p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0)


@dataclass
class SamplerOutput:
    """One sampled token per row, and the logprobs of the rows that asked for them.

    Attributes:
        token_ids: the sampled token of each row.
        logprobs: per row, {token_id: logprob} of the top params.logprobs tokens plus the sampled
            one, taken from the raw logits (before penalties and temperature); None where the row
            did not ask.
    """

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


class SampleHandle:
    """A step's sampled tokens, maybe still on their way to the host.

    Attributes:
        tokens: the sampled ids on the logits' device ([num_rows], int64): the next step's inputs
            are patched from it without waiting for the host (async scheduling).
    """

    def __init__(self, tokens: torch.Tensor, copy: "_HostCopy | None", num_rows: int,
                 rows: list[SamplingRow] | None = None,
                 logprobs: "_GatheredLogprobs | None" = None) -> None:
        self.tokens = tokens
        self._copy = copy
        self._num_rows = num_rows
        self._rows = rows
        self._logprobs = logprobs
        self._output: SamplerOutput | None = None

    def result(self) -> SamplerOutput:
        """The tokens as Python ints (and logprobs): waits for the step if it still runs."""
        if self._output is None:
            ids = self._copy.wait(self._num_rows) if self._copy else self.tokens.tolist()
            logprobs = ([None] * self._num_rows if self._logprobs is None
                        else _read_logprobs(self._logprobs, self._rows, ids))
            self._output = SamplerOutput(ids, logprobs)
        return self._output


class _HostCopy:
    """A pinned host buffer that a step's tokens are copied into without blocking the host."""

    def __init__(self, size: int = 1024) -> None:
        self.buffer = torch.empty(size, dtype=torch.int64, pin_memory=True)
        self.done = torch.cuda.Event()

    def start(self, tokens: torch.Tensor) -> "_HostCopy":
        n = tokens.shape[0]
        if n > self.buffer.shape[0]:
            self.buffer = torch.empty(n, dtype=torch.int64, pin_memory=True)
        self.buffer[:n].copy_(tokens, non_blocking=True)
        self.done.record()
        return self

    def wait(self, n: int) -> list[int]:
        self.done.synchronize()
        return self.buffer[:n].tolist()


class Sampler:
    """Samples a batch of rows, each with its own SamplingParams.

    Args:
        seed: seed of the shared generator used by rows without their own generator.
        device: where logits (and so the generators) live.
    """

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = self.make_generator(seed)
        self._host: list[_HostCopy] | None = None
        self._turn = 0

    def make_generator(self, seed: int) -> torch.Generator:
        """Returns a generator on the sampler's device, for a request with its own seed."""
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        """Samples one token per row of logits [num_rows, vocab] (any float dtype: rows that
        need more than an argmax are computed in float32); does not modify logits."""
        return self.launch(logits, rows).result()

    def launch(self, logits: torch.Tensor, rows: list[SamplingRow],
               prev_tokens: torch.Tensor | None = None) -> "SampleHandle":
        """Like __call__, but the step is not waited for: the tokens stay on the device
        (`SampleHandle.tokens`, which the next step's inputs can read) while a copy to the host
        runs behind the step, and logprobs are gathered there too; `result()` reads them back.
        `prev_tokens`: the previous launch's sampled tokens, where rows' `pending_source` point."""
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [len(rows)={len(rows)}, vocab], "
                             f"got {tuple(logits.shape)}")
        # NOTE: the hot path of decode benchmarks: keep it free of per-row tensor work. The argmax
        # runs on the logits' own dtype: upcasting 16-bit values to float32 is exact, so the
        # winner (and the first-index tie rule) is the same, without writing and reading a
        # float32 copy of [rows, vocab] (docs/benchmarks.md says how many bytes that saves).
        if all(_plain_greedy(r) for r in rows):
            tokens = logits.argmax(dim=-1)
            return SampleHandle(tokens, self._to_host(tokens), len(rows))

        logits = logits.float()
        if any(r.token_bitmask is not None for r in rows):
            logits = apply_token_bitmasks(logits, [r.token_bitmask for r in rows])
        logprobs = _raw_logprobs(logits, rows)
        logits = logits.clone()
        _suppress(logits, rows)
        _allow_and_bias(logits, rows)
        _apply_penalties(logits, rows, prev_tokens)

        token_ids = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if random_rows:
            idx = torch.tensor(random_rows, device=logits.device)
            sampled = self._sample(logits[idx], [rows[i] for i in random_rows])
            token_ids[idx] = sampled
        # (logprobs are gathered on the device now and read back with the tokens, in result())
        gathered = _gather_logprobs(logprobs, rows, token_ids) if logprobs is not None else None
        return SampleHandle(token_ids, self._to_host(token_ids), len(rows), rows, gathered)

    def _to_host(self, tokens: torch.Tensor) -> "_HostCopy | None":
        """Start copying `tokens` to pinned host memory (CUDA); None on CPU (nothing to wait for)."""
        if tokens.device.type != "cuda":
            return None
        if self._host is None:
            self._host = [_HostCopy() for _ in range(2)]
        # NOTE: two buffers in turn: the engine reads step N's tokens while step N+1's copy runs.
        self._turn ^= 1
        return self._host[self._turn].start(tokens)

    def _sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Temperature, top_k, top_p, min_p, then one random draw per row."""
        temps = torch.tensor([r.params.temperature for r in rows], device=logits.device)
        logits = logits / temps.unsqueeze(1)
        logits = _top_k_top_p(logits, rows)
        logits = _min_p(logits, rows)
        probs = logits.softmax(dim=-1)

        q = torch.empty_like(probs)
        shared = [i for i, r in enumerate(rows) if r.generator is None]
        if shared:
            q[shared] = torch.empty(len(shared), probs.shape[1], device=probs.device
                                    ).exponential_(generator=self.generator)
        for i, r in enumerate(rows):
            if r.generator is not None:
                q[i].exponential_(generator=r.generator)
        # NOTE: exponential_ may return 0 on some backends; a tiny q keeps the row's winner finite.
        q.clamp_min_(torch.finfo(q.dtype).tiny)
        return (probs / q).argmax(dim=-1)


def _plain_greedy(row: SamplingRow) -> bool:
    p = row.params
    return (p.is_greedy and p.logprobs is None and not row.suppress_token_ids
            and row.token_bitmask is None and p.logit_bias is None
            and p.allowed_token_ids is None and p.repetition_penalty == 1.0
            and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0)


def _raw_logprobs(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor | None:
    if all(r.params.logprobs is None for r in rows):
        return None
    return torch.log_softmax(logits, dim=-1)


@dataclass
class _GatheredLogprobs:
    """The logprobs rows' top-k and their sampled tokens' logprobs, still on the device."""

    wanted: list[int]        # rows that asked for logprobs
    top_vals: torch.Tensor   # [len(wanted), n_max]
    top_ids: torch.Tensor    # [len(wanted), n_max]
    sampled: torch.Tensor    # [len(wanted), 1]


def _gather_logprobs(logprobs: torch.Tensor, rows: list[SamplingRow],
                     token_ids: torch.Tensor) -> _GatheredLogprobs:
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    n_max = max(rows[i].params.logprobs for i in wanted)
    index = torch.tensor(wanted, device=logprobs.device)
    sub = logprobs[index]
    top_vals, top_ids = sub.topk(n_max, dim=-1) if n_max else (sub[:, :0], sub[:, :0].long())
    sampled = sub.gather(1, token_ids[index].unsqueeze(1))
    return _GatheredLogprobs(wanted, top_vals, top_ids, sampled)


def _read_logprobs(g: _GatheredLogprobs, rows: list[SamplingRow],
                   token_ids: list[int]) -> list[dict[int, float] | None]:
    """Per row, {token_id: logprob} of its top params.logprobs and its sampled token; else None."""
    out: list[dict[int, float] | None] = [None] * len(rows)
    top_vals, top_ids, sampled = g.top_vals.tolist(), g.top_ids.tolist(), g.sampled.tolist()
    for j, i in enumerate(g.wanted):
        n = rows[i].params.logprobs
        entry = dict(zip(top_ids[j][:n], top_vals[j][:n]))
        entry[token_ids[i]] = sampled[j][0]
        out[i] = entry
    return out


def _suppress(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    vocab = logits.shape[1]
    row_idx, tok_idx = [], []
    for i, r in enumerate(rows):
        for t in r.suppress_token_ids:
            if 0 <= t < vocab:
                row_idx.append(i)
                tok_idx.append(t)
    if row_idx:
        logits[row_idx, tok_idx] = float("-inf")


def _allow_and_bias(logits: torch.Tensor, rows: list[SamplingRow]) -> None:
    """allowed_token_ids: every other token to -inf; logit_bias: added to its tokens' logits.
    Ids outside the vocabulary are ignored (the engine refuses them on arrival)."""
    vocab = logits.shape[1]
    for i, r in enumerate(rows):
        p = r.params
        if p.allowed_token_ids is not None:
            keep = torch.tensor([t for t in p.allowed_token_ids if t < vocab], dtype=torch.int64,
                                device=logits.device)
            kept = logits[i, keep]
            logits[i] = float("-inf")
            logits[i, keep] = kept
        if p.logit_bias:
            ids = [t for t in p.logit_bias if t < vocab]
            logits[i, ids] += torch.tensor([p.logit_bias[t] for t in ids], dtype=logits.dtype,
                                           device=logits.device)


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow],
                     prev_tokens: torch.Tensor | None = None) -> None:
    """Repetition penalty (prompt + output), then frequency/presence penalties (output only).

    A row's output may end with a token still on the device (`pending_source`, async
    scheduling): it joins the ids there, so nothing waits for the host. Frequency and presence
    run over a dense count of the output ids (an index_add_), which counts a repeated id right
    however its occurrences arrive; each penalised logit gets `freq * n + presence` subtracted,
    the same float32 arithmetic as per id.
    """
    vocab = logits.shape[1]
    device = logits.device
    for i, r in enumerate(rows):
        p = r.params
        repetition = p.repetition_penalty != 1.0
        additive = p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        if not (repetition or additive):
            continue
        pending = (prev_tokens[r.pending_source:r.pending_source + 1] if r.pending_source >= 0
                   else None)
        if repetition:
            seen = [t for t in set(r.prompt_token_ids).union(r.output_token_ids) if t < vocab]
            idx = torch.tensor(seen, dtype=torch.int64, device=device)
            if pending is not None:  # (an id twice gets the same value written twice)
                idx = torch.cat((idx, pending))
            if idx.numel():
                vals = logits[i, idx]
                logits[i, idx] = torch.where(vals > 0, vals / p.repetition_penalty,
                                             vals * p.repetition_penalty)
        if additive:
            ids = torch.tensor([t for t in r.output_token_ids if t < vocab], dtype=torch.int64,
                               device=device)
            if pending is not None:
                ids = torch.cat((ids, pending))
            if ids.numel():
                counts = torch.zeros(vocab, dtype=logits.dtype, device=device)
                counts.index_add_(0, ids, torch.ones(ids.shape[0], dtype=logits.dtype, device=device))
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)


def _top_k_top_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Masks (to -inf) what top_k and top_p exclude; top_p counts what top_k left."""
    use_k = any(r.params.top_k > 0 for r in rows)
    use_p = any(r.params.top_p < 1.0 for r in rows)
    if not (use_k or use_p):
        return logits
    vocab = logits.shape[1]
    k = torch.tensor([min(r.params.top_k, vocab) if r.params.top_k > 0 else vocab
                      for r in rows], device=logits.device)
    if not use_p:  # top_k alone: a partial topk is much cheaper than sorting the vocabulary
        kth = logits.topk(int(k.max()), dim=-1).values.gather(1, (k - 1).unsqueeze(1))
        return logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th stay in
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if use_k:
        ranks = torch.arange(vocab, device=logits.device)
        sorted_logits.masked_fill_(ranks.unsqueeze(0) >= k.unsqueeze(1), float("-inf"))
    # A token stays when the tokens ranked above it sum to less than top_p: the smallest set
    # reaching top_p. Disabled rows get 2.0 so rounding in cumsum can never cut them.
    top_p = torch.tensor([r.params.top_p if r.params.top_p < 1.0 else 2.0 for r in rows],
                         device=logits.device)
    probs = sorted_logits.softmax(dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= top_p.unsqueeze(1)
    drop[:, 0] = False
    sorted_logits.masked_fill_(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _min_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Masks tokens with prob < min_p * max prob, i.e. logit < max logit + log(min_p)."""
    if not any(r.params.min_p > 0.0 for r in rows):
        return logits
    min_p = torch.tensor([r.params.min_p for r in rows], device=logits.device)
    threshold = logits.max(dim=-1, keepdim=True).values + torch.log(min_p).unsqueeze(1)
    return logits.masked_fill(logits < threshold, float("-inf"))

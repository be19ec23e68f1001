"""A model runner that does no math: measures the engine's own overhead and drives property tests.

It samples a deterministic pseudo-random token per request from the request's length, so runs
repeat exactly, and it never touches a tensor.
"""
from __future__ import annotations

from pagedllm.sampler import SamplerOutput
from pagedllm.scheduler import SchedulerOutput


class _Done:
    """A step's result that is already there (SampleHandle's interface)."""

    def __init__(self, output: SamplerOutput) -> None:
        self.output = output

    def result(self) -> SamplerOutput:
        return self.output


class NullRunner:
    """Stands in for ModelRunner behind the same `execute(step)` / `launch(step)` calls."""

    def __init__(self, num_kv_blocks: int, vocab_size: int, device: str = "cpu") -> None:
        self.num_kv_blocks = num_kv_blocks
        self.vocab_size = vocab_size
        self.device = device
        self.num_forward_tokens = 0
        self._last: list[int] = []

    def execute(self, step: SchedulerOutput) -> SamplerOutput:
        return self.launch(step).result()

    def launch(self, step: SchedulerOutput) -> _Done:
        """As ModelRunner.launch: a pending row's input is the last launch's token at its source,
        so async and synchronous scheduling sample the same tokens."""
        self.num_forward_tokens += step.total_tokens
        if step.pending_rows:  # the row's list ends one token short: that token is the last launch's
            source = dict(zip(step.pending_rows, step.pending_sources))
            last = self._last
            out = [((len(t) + 1) * 2654435761 + last[source[i]]) % self.vocab_size
                   if i in source else (len(t) * 2654435761 + t[-1]) % self.vocab_size
                   for i, (t, s) in enumerate(zip(step.token_ids, step.sample)) if s]
        else:
            out = [(len(t) * 2654435761 + t[-1]) % self.vocab_size
                   for t, s in zip(step.token_ids, step.sample) if s]
        self._last = out
        return _Done(SamplerOutput(token_ids=out, logprobs=[None] * len(out)))

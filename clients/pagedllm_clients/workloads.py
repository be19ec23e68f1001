"""The benchmark workloads, defined once (docs/workloads.md says what each one is and why).

    nano    256 requests; prompt and output lengths each uniform in [100, 1024]; prompt token ids
            uniform below 10000; ignore_eos, so each output is exactly its length; seed 0.
            nano-vllm's published benchmark, so figures compare with vLLM's and nano-vllm's.
    serve   nano's requests sent through the server at concurrency 1, 16, 64 and 256.

Every benchmark draws its lengths with `nano_lengths` and its prompts with `prompt_token_ids`
(the offline engine takes ids) or `prompt_texts` (a server takes text): the same seed gives the
same requests everywhere. `scale` shrinks both length ranges for quick CPU runs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

NANO_REQUESTS = 256
NANO_LEN_RANGE = (100, 1024)
PROMPT_ID_LIMIT = 10000  # nano's prompt ids are drawn below this
SERVE_CONCURRENCIES = (1, 16, 64, 256)


def scaled_range(scale: float) -> list[int]:
    """nano's length range [100, 1024] times `scale` (at least 1)."""
    lo, hi = NANO_LEN_RANGE
    return [max(1, round(lo * scale)), max(1, round(hi * scale))]


def nano_lengths(num_requests: int = NANO_REQUESTS, seed: int = 0, scale: float = 1.0
                 ) -> tuple[list[int], list[int]]:
    """Prompt and output lengths of `nano`: every prompt length first, then every output length."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    rng = random.Random(seed)
    prompts = [rng.randint(*NANO_LEN_RANGE) for _ in range(num_requests)]
    outputs = [rng.randint(*NANO_LEN_RANGE) for _ in range(num_requests)]
    if scale != 1.0:
        prompts = [max(1, round(n * scale)) for n in prompts]
        outputs = [max(1, round(n * scale)) for n in outputs]
    return prompts, outputs


def prompt_token_ids(lengths: Sequence[int], vocab_size: int, excluded_ids: Sequence[int] = (),
                     seed: int = 0, id_limit: int = PROMPT_ID_LIMIT) -> list[list[int]]:
    """Random token ids below min(id_limit, vocab_size), none excluded; one list per length."""
    high = min(id_limit, vocab_size)
    excluded = set(excluded_ids)
    pool = [i for i in range(high) if i not in excluded]
    if not pool:
        raise ValueError("no ordinary token ids below the limit")
    rng = random.Random(seed)
    return [[rng.choice(pool) for _ in range(n)] for n in lengths]


def nano_prompts(num_requests: int = NANO_REQUESTS, seed: int = 0, vocab_size: int = PROMPT_ID_LIMIT
                 ) -> tuple[list[list[int]], list[int]]:
    """`nano` for an offline engine: (prompt token ids, output lengths)."""
    prompt_lens, output_lens = nano_lengths(num_requests, seed)
    return prompt_token_ids(prompt_lens, vocab_size, seed=seed), output_lens


def peer_workload(num_requests: int, seed: int, prompt_range: tuple[int, int] = NANO_LEN_RANGE,
                  output_range: tuple[int, int] = NANO_LEN_RANGE) -> tuple[list[list[int]], list[int]]:
    """Requests for the side-by-side runs against vLLM (bench/peer.py): per request a prompt
    length (uniform in prompt_range) then its ids, all from one generator; then the output lengths
    (uniform in output_range). With `nano`'s ranges (the defaults) this is the draw order of the
    vLLM figures recorded on 2026-11-30 (A = 256 requests, seed 7; B = 1,024 requests, seed 8),
    kept so new runs meet the very same prompts."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(PROMPT_ID_LIMIT) for _ in range(rng.randint(*prompt_range))]
               for _ in range(num_requests)]
    return prompts, [rng.randint(*output_range) for _ in range(num_requests)]


def prompt_texts(tokenizer, lengths: Sequence[int], seed: int = 0) -> list[str]:
    """Deterministic prompt texts of about `lengths[i]` tokens each, for servers that take text.

    For each request, `length` ids are drawn (`prompt_token_ids`, no special tokens and no token
    whose text holds a NUL), decoded with the model's tokenizer, re-encoded, cut to `length` ids
    and decoded again: the text encodes to about `length` tokens.

    Args:
        tokenizer: a `tokenizers.Tokenizer` (the model's tokenizer.json).
    """
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    excluded = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    # NOTE: no token whose text holds a NUL: the server's ONNX tokenizer refuses such a prompt
    # (its op reads C strings), and a benchmark's prompts must be ones it serves.
    excluded |= {i for i in range(min(PROMPT_ID_LIMIT, vocab)) if "\x00" in tokenizer.decode([i])}
    texts = []
    for ids, n in zip(prompt_token_ids(lengths, vocab, sorted(excluded), seed), lengths):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        again = tokenizer.encode(text, add_special_tokens=False).ids[:n]
        texts.append(tokenizer.decode(again, skip_special_tokens=True))
    return texts


@dataclass
class Workload:
    """The requests of one benchmark run through a server, in arrival order.

    Attributes:
        name: "nano" or "serve".
        prompt_lens: target prompt length (tokens) of each request.
        output_lens: max_tokens of each request (ignore_eos makes it the exact output length).
        prompts: prompt text of each request (empty until `attach_prompts`).
        seed: the seed of the lengths (and of the prompt text unless `prompt_seed` is set).
        scale: the factor applied to both length ranges.
        prompt_seed: the seed of the prompts' token ids. NOTE: a server with prefix caching keeps
            the blocks of prompts it has served; the same prompts sent again skip most of their
            prefill, so every run that is compared needs prompts the server has not seen.
    """

    name: str
    prompt_lens: list[int]
    output_lens: list[int]
    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    scale: float = 1.0
    prompt_seed: int | None = None

    def __len__(self) -> int:
        return len(self.output_lens)

    @property
    def text_seed(self) -> int:
        return self.seed if self.prompt_seed is None else self.prompt_seed

    def with_prompts(self, model_dir: str | Path, prompt_seed: int) -> "Workload":
        """A copy with the same lengths and new prompt text drawn with `prompt_seed`."""
        return attach_prompts(replace(self, prompts=[], prompt_seed=prompt_seed), model_dir)

    def describe(self) -> dict:
        """The workload's definition, for a result file."""
        described = {"name": self.name, "num_requests": len(self), "seed": self.seed,
                     "scale": self.scale, "prompt_len_range": scaled_range(self.scale),
                     "output_len_range": scaled_range(self.scale), "ignore_eos": True,
                     "target_prompt_tokens": sum(self.prompt_lens),
                     "target_output_tokens": sum(self.output_lens)}
        if self.prompt_seed is not None:
            described["prompt_seed"] = self.prompt_seed
        return described


def make_workload(name: str = "nano", num_requests: int = NANO_REQUESTS, seed: int = 0,
                  scale: float = 1.0) -> Workload:
    """The named workload's lengths (no prompt text yet)."""
    if name not in ("nano", "serve"):
        raise ValueError(f"workload must be 'nano' or 'serve', got {name!r}")
    prompt_lens, output_lens = nano_lengths(num_requests, seed, scale)
    return Workload(name, prompt_lens, output_lens, seed=seed, scale=scale)


def attach_prompts(workload: Workload, model_dir: str | Path) -> Workload:
    """Fills `workload.prompts` from the model's tokenizer.json."""
    import tokenizers

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"--model-dir has no tokenizer.json: {path}")
    workload.prompts = prompt_texts(tokenizers.Tokenizer.from_file(str(path)),
                                    workload.prompt_lens, workload.text_seed)
    return workload


def poisson_arrivals(num_requests: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival times (s from the start) of a Poisson process of `rate` requests/s; first at 0."""
    if not rate > 0:
        raise ValueError(f"request rate must be > 0, got {rate}")
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(num_requests):
        times.append(t)
        t += rng.expovariate(rate)
    return times

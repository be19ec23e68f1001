"""Per-request sampling parameters, with vLLM's names, defaults and ranges.

The same dataclass is built from Python (`LLM.generate`) and from the JSON that Triton clients send
in `sampling_parameters` (`SamplingParams.from_json`), so both paths share one set of checks.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

from pagedllm.structured_outputs_params import StructuredOutputsParams

MAX_LOGPROBS = 20
"""Most top logprobs a request may ask for (vLLM's default `max_logprobs`)."""
MAX_N = 64
"""Most completions one request may ask for (each is a sequence of the running batch)."""
MAX_STOP = 16
"""Most stop strings one request may give: every new piece of text is searched for each."""
MAX_STOP_CHARS = 256
"""Longest stop string (a stream holds back that many characters less one)."""
MAX_STOP_TOKEN_IDS = 256
"""Most stop token ids one request may give."""

_GREEDY_EPS = 1e-5
_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts

_INT_FIELDS = ("n", "max_tokens", "top_k", "min_tokens", "logprobs", "seed")
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty")
_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output")
_OPTIONAL_FIELDS = ("max_tokens", "seed", "stop", "stop_token_ids", "logprobs")


@dataclass
class SamplingParams:
    """How to pick the tokens of one request, and when to stop it.

    Field names, defaults and valid ranges follow vLLM so that clients written for vLLM (or for
    Triton's vllm_backend) work unchanged. Every field is checked on construction; a bad value
    raises ValueError naming the field and its allowed range.

    Attributes:
        n: how many completions to generate for the prompt (each its own sequence).
        max_tokens: most tokens to generate; None means up to the model's context length.
        temperature: softmax temperature; 0 means greedy (argmax).
        top_p: nucleus sampling: keep the smallest set of tokens whose probability sums to top_p.
        top_k: keep the k most likely tokens; 0 (or -1, normalised to 0) disables it.
        min_p: drop tokens less likely than min_p times the most likely one.
        repetition_penalty: > 1 discourages any token already in the prompt or the output.
        presence_penalty: subtracted once from the logit of every token already in the output.
        frequency_penalty: subtracted from a token's logit per time it appears in the output.
        seed: a per-request seed: the request samples the same tokens whatever else is batched
            (with n > 1, completion i draws with seed + i).
        stop: strings that end the request when they appear in the output (not included in it,
            unless include_stop_str_in_output); at most MAX_STOP of them, each at most
            MAX_STOP_CHARS long.
        stop_token_ids: token ids that end the request (in addition to EOS); at most
            MAX_STOP_TOKEN_IDS.
        ignore_eos: keep generating after EOS (benchmarks).
        min_tokens: EOS and stop_token_ids are forbidden until this many tokens were generated.
        logprobs: return the log-probabilities of this many top tokens (plus the sampled one).
        skip_special_tokens: leave special tokens out of the output text.
        include_stop_str_in_output: keep the stop string that ended the request in its text.
        logit_bias: {token id: bias}, added to those tokens' logits (OpenAI's [-100, 100]).
        allowed_token_ids: only these tokens may be sampled.
        bad_words: words never generated: the last token of each word's tokens (with and
            without a leading space) is forbidden wherever the output ends with the rest.
        structured_outputs: the output must follow this JSON Schema, regex, choice or grammar
            (a StructuredOutputsParams, or a dict of its fields); each step masks the tokens
            that would break it, and the request stops when the grammar is complete. It cannot
            be combined with min_tokens (the grammar decides where the output ends).
    """

    n: int = 1
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_FIELDS:
                continue
            setattr(self, name, _as_int(name, value))
        for name in _FLOAT_FIELDS:
            setattr(self, name, _as_float(name, getattr(self, name)))
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.stop = _normalise_stop(self.stop)
        self.stop_token_ids = _normalise_stop_token_ids(self.stop_token_ids)
        self.logit_bias = _normalise_logit_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _token_ids("allowed_token_ids", self.allowed_token_ids)
            if not self.allowed_token_ids:
                raise ValueError("allowed_token_ids must not be empty (or None: every token)")
        if self.bad_words is not None:
            if (not isinstance(self.bad_words, (list, tuple))
                    or not all(isinstance(w, str) and w for w in self.bad_words)):
                raise ValueError(f"bad_words must be a list of non-empty strings, "
                                 f"got {self.bad_words!r}")
            self.bad_words = list(self.bad_words)
        if self.structured_outputs is not None:
            self.structured_outputs = StructuredOutputsParams.from_json(self.structured_outputs)
        self._check_ranges()

    def _check_ranges(self) -> None:
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {self.n}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (or None), got {self.max_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ValueError(f"top_k must be >= -1 (0 or -1 disables it), got {self.top_k}")
        if self.top_k == -1:
            self.top_k = 0
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.seed is not None and not _SEED_RANGE[0] <= self.seed < _SEED_RANGE[1]:
            raise ValueError(f"seed must be in [-2**63, 2**64), got {self.seed}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), "
                             f"got {self.min_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if self.structured_outputs is not None and self.min_tokens:
            raise ValueError("min_tokens cannot be combined with structured_outputs (the "
                             "grammar decides where the output ends)")

    @property
    def is_greedy(self) -> bool:
        """True when the request takes the argmax (temperature is, in effect, zero)."""
        return self.temperature < _GREEDY_EPS

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> SamplingParams:
        """Builds SamplingParams from a JSON object (Triton's `sampling_parameters` input).

        Values are coerced the way JSON clients send them: integral floats (16.0) and numeric
        strings ("0.7", as Triton's vllm_backend examples send) for numbers, "true"/"false" for
        bools; null means None for the optional fields.

        Raises:
            ValueError: the text is not a JSON object, a key is not a SamplingParams field, or a
                value is invalid (the message names the field).
        """
        if isinstance(data, (str, bytes, bytearray)):
            try:
                data = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"sampling parameters are not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"sampling parameters must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs = {}
        if "guided_decoding" in data and "structured_outputs" not in data:
            # (vLLM's name for structured_outputs before 0.10.2; its clients still send it)
            data = {("structured_outputs" if k == "guided_decoding" else k): v
                    for k, v in data.items()}
        for name, value in data.items():
            if name not in known:
                raise ValueError(f"unknown sampling parameter {name!r}; known: {sorted(known)}")
            kwargs[name] = _coerce_json(name, value)
        return cls(**kwargs)


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _normalise_stop(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stop):
        raise ValueError("stop must not contain an empty string")
    if len(stop) > MAX_STOP:
        raise ValueError(f"stop must hold at most {MAX_STOP} strings, got {len(stop)}")
    longest = max(map(len, stop), default=0)
    if longest > MAX_STOP_CHARS:
        raise ValueError(f"stop must hold strings of at most {MAX_STOP_CHARS} characters, got "
                         f"one of {longest}")
    return list(stop)


def _normalise_stop_token_ids(ids: object) -> list[int]:
    return [] if ids is None else _token_ids("stop_token_ids", ids)


def _token_ids(name: str, ids: object) -> list[int]:
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"{name} must be a list of ints, got {ids!r}")
    if name == "stop_token_ids" and len(ids) > MAX_STOP_TOKEN_IDS:
        raise ValueError(f"{name} must hold at most {MAX_STOP_TOKEN_IDS} ids, got "
                         f"{len(ids)}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, Integral) or i < 0:
            raise ValueError(f"{name} must be non-negative ints, got {i!r}")
        out.append(int(i))
    return out


def _normalise_logit_bias(bias: object) -> dict[int, float] | None:
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must be a {{token id: bias}} object, got {bias!r}")
    out = {}
    for key, value in bias.items():
        try:
            token = int(key) if not isinstance(key, bool) else -1
        except (TypeError, ValueError):
            token = -1
        if token < 0 or (isinstance(key, float) and not key.is_integer()):
            raise ValueError(f"logit_bias keys must be token ids (ints >= 0), got {key!r}")
        if isinstance(value, str):  # (as vllm_backend clients send numbers)
            try:
                value = float(value)
            except ValueError:
                pass
        value = _as_float("logit_bias", value)
        if not -100 <= value <= 100:
            raise ValueError(f"logit_bias values must be in [-100, 100], got {value}")
        out[token] = value
    return out or None


def _coerce_json(name: str, value: Any) -> Any:
    """Turns a JSON value into the Python type of field `name`; leaves the rest to validation."""
    if value is None:
        return None
    if name == "structured_outputs" and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"structured_outputs is not a JSON object: {e}") from None
    if name in _INT_FIELDS or name in ("stop_token_ids", "allowed_token_ids"):
        if name in ("stop_token_ids", "allowed_token_ids") and isinstance(value, list):
            return [_json_int(name, v) for v in value]
        return _json_int(name, value)
    if name in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if name in _BOOL_FIELDS and isinstance(value, str):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _json_int(name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an int, got {value!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{name} must be an int, got {value!r}")
        return int(value)
    return value

"""Bounds on what one legal request may cost, checked before it reaches Triton.

Each is a ServiceConfig field with a flag of the same name (docs/reliability.md, Security):

    max_stop_sequences  16    stop strings per request; every generated token is checked
                              against each of them (OpenAI allows 4)
    max_stop_chars      256   characters of one stop string (the stream holds back that many)
    max_n               64    completions per request (each a sequence of the running batch)
    max_logprobs        20    logprobs / top_logprobs
    max_prompt_tokens   None  prompt tokens (None: the engine's max_model_len decides)

`best_of` above 1 is refused outright (schemas.py): this server does not implement it. The
engine enforces its own ceilings too (pagedllm.sampling_params: MAX_N, MAX_LOGPROBS, MAX_STOP,
MAX_STOP_CHARS), which gRPC and /v2 clients meet in `sampling_parameters`; these limits can only
be lower. Every refusal is a 400 naming the request's field.
"""
from __future__ import annotations

from collections.abc import Sequence

from pagedllm_openai.config import ServiceConfig
from pagedllm_openai.errors import OpenAIError, bad_request
from pagedllm_openai.tokenizer import ModelTokenizer


def check_sampling_limits(config: ServiceConfig, n: int, stop: str | list[str] | None,
                          logprobs: int | None, logprobs_param: str) -> None:
    """400 naming the field when n, stop or logprobs (named `logprobs_param` here) is over its
    limit."""
    if n > config.max_n:
        raise bad_request(f"n: at most {config.max_n} completions per request (max_n), got {n}",
                          "n")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > config.max_stop_sequences:
        raise bad_request(f"stop: at most {config.max_stop_sequences} stop sequences "
                          f"(max_stop_sequences), got {len(stops)}", "stop")
    longest = max(map(len, stops), default=0)
    if longest > config.max_stop_chars:
        raise bad_request(f"stop: a stop sequence may have at most {config.max_stop_chars} "
                          f"characters (max_stop_chars), got one of {longest}", "stop")
    if logprobs is not None and logprobs > config.max_logprobs:
        raise bad_request(f"{logprobs_param}: at most {config.max_logprobs} (max_logprobs), got "
                          f"{logprobs}", logprobs_param)


def check_prompt_tokens(config: ServiceConfig, tokenizer: ModelTokenizer,
                        prompt: str | Sequence[int], param: str) -> None:
    """400 naming `param` when the prompt has more than max_prompt_tokens tokens. A text is
    tokenized only when it could be over: a token holds at least one UTF-8 byte."""
    limit = config.max_prompt_tokens
    if limit is None:
        return
    if isinstance(prompt, str):
        if len(prompt.encode()) + 2 <= limit:  # (+2: BOS/EOS the tokenizer may add)
            return
        count = len(tokenizer.encode(prompt))
    else:
        count = len(prompt)
    if count > limit:
        raise OpenAIError(400, f"{param}: the prompt has {count} tokens; this server takes at "
                               f"most {limit} (max_prompt_tokens)", param, "prompt_too_long")

"""When does a request stop? EOS, stop token ids, max_tokens, and stop strings.

Stop strings are never emitted, not even partly: the streamed text holds back the last
`max(len(stop)) - 1` characters until it is known that no stop string starts there. With
`include_stop_str_in_output` the stop string ends the text instead (nothing is held back).
"""
from __future__ import annotations

from pagedllm.request import Request, RequestStatus
from pagedllm.sampling_params import SamplingParams


def check_token(r: Request, token: int) -> RequestStatus | None:
    """Status after appending `token`: stopped by EOS / a stop token id, at max_tokens, or None."""
    p = r.sampling_params
    num_output = len(r.all_token_ids) - r.num_prompt_tokens
    if num_output >= p.min_tokens:
        if token in p.stop_token_ids:
            r.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
        if not p.ignore_eos and token in r.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
    if num_output >= r.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    return None


def stopping_ids(p: SamplingParams, eos_token_ids: tuple[int, ...]) -> frozenset[int]:
    """Token ids that may stop a request (a fast membership test before check_token)."""
    return frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else frozenset(eos_token_ids))


def find_stop_string(r: Request, num_new_chars: int) -> bool:
    """Cut the text before the first stop string that ends in the new characters; True if one did."""
    stops = r.sampling_params.stop
    if not stops or num_new_chars == 0 or r.num_output_tokens < r.sampling_params.min_tokens:
        return False
    text = r.state.text
    start_min = len(text) - num_new_chars
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, max(0, start_min - len(s) + 1))
        if i != -1 and (best is None or i < best[0]):
            best = (i, s)
    if best is None:
        return False
    end = best[0] + len(best[1]) if r.sampling_params.include_stop_str_in_output else best[0]
    r.state.text = text[:end]
    r.stop_reason = best[1]
    return True


def holdback(p: SamplingParams) -> int:
    """Characters at the end of a text that may still turn out to begin one of p's stop strings."""
    if not p.stop or p.include_stop_str_in_output:
        return 0
    return max(map(len, p.stop)) - 1

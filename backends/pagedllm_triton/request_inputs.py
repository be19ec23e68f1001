"""The `llm` model's input tensors -> what the engine needs, with errors that name the input.

Pure numpy, no Triton: the Triton adapter passes `{input name: numpy array}` and gets back a
`GenerateInputs` or a ValueError whose message says which input is wrong and why. Every failure
of reading an input, expected or not, comes out as such a ValueError.

Inputs (the batch dimension of 1 is Triton's, from max_batch_size > 0). The names and meanings
follow Triton's vllm_backend (and TensorRT-LLM's `max_tokens`, `min_length`):
    input_ids               INT64  [1, n]   prompt token ids (padded rows allowed: see lengths)
    input_lengths           INT64  [1, 1]   how many of input_ids are the prompt (optional)
    text_has_nul            BOOL   [1, 1]   the ensemble's text_input held a NUL (preprocessing's
                                            tokenizer cannot read it): the request is refused
    stream                  BOOL   [1, 1]   one response per delta (default false: one response)
    sampling_parameters     BYTES  [1, 1]   JSON object with SamplingParams names (numbers may be
                                            strings, as vllm_backend's clients send them)
    exclude_input_in_output BOOL   [1, 1]   without streaming, false (or absent) puts the prompt
                                            before the output text; with streaming, false is an
                                            error (vllm_backend's rule)
    max_tokens              INT32  [1, 1]   overrides sampling_parameters' max_tokens
    min_length              INT32  [1, 1]   overrides sampling_parameters' min_tokens (TRT-LLM's name)
    return_finish_reason, return_cumulative_logprob, return_logprobs, return_num_input_tokens,
    return_num_output_tokens
                            BOOL   [1, 1]   accepted for vllm_backend's clients; the outputs are
                                            always sent (an ensemble's outputs are fixed)
    cancel                  BYTES  [1, 1]   abort the live request whose responses carried this
                                            cancel_token (the request's other inputs are ignored)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pagedllm.sampling_params import SamplingParams

RETURN_FLAGS = ("return_finish_reason", "return_cumulative_logprob", "return_logprobs",
                "return_num_input_tokens", "return_num_output_tokens")


@dataclass
class GenerateInputs:
    """One request, read: a generation (prompt, params, how to answer) or a cancel."""

    prompt_token_ids: list[int] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    prepend_prompt: bool = False
    cancel: bool = False
    cancel_token: str = ""


def parse_inputs(tensors: dict[str, np.ndarray], vocab_size: int | None = None) -> GenerateInputs:
    """Validates and converts one request's inputs (absent optional inputs are left out).

    Args:
        tensors: the request's input tensors by name.
        vocab_size: token ids must be below it (None: not checked here).

    Raises:
        ValueError: naming the input that is wrong and why.
    """
    try:
        return _parse(tensors, vocab_size)
    except ValueError:
        raise
    except RecursionError:
        raise ValueError("input 'sampling_parameters' is nested too deeply to read") from None
    except Exception as e:  # noqa: BLE001 - any other surprise is still this request's bad input
        raise ValueError(f"the request's inputs could not be read ({type(e).__name__}: {e})") from None


def _parse(tensors: dict[str, np.ndarray], vocab_size: int | None) -> GenerateInputs:
    if "cancel" in tensors:
        token = _text(tensors, "cancel")
        if not token:
            raise ValueError("input 'cancel' is empty: give the cancel_token from a response of "
                             "the request to cancel")
        return GenerateInputs(cancel=True, cancel_token=token)
    for name in RETURN_FLAGS:
        _flag(tensors, name)  # checked, as vllm_backend reads them: one bool each
    ids = _prompt_ids(tensors)
    if vocab_size is not None:
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        if bad.size:
            raise ValueError(f"input 'input_ids': token id {int(bad[0])} is outside the "
                             f"vocabulary [0, {vocab_size})")
    params = SamplingParams()
    if "sampling_parameters" in tensors:
        try:
            params = SamplingParams.from_json(_text(tensors, "sampling_parameters"))
        except ValueError as e:
            raise ValueError(f"input 'sampling_parameters': {e}") from None
    for name, field_name in (("max_tokens", "max_tokens"), ("min_length", "min_tokens")):
        if name in tensors:
            try:
                params = dataclasses.replace(params, **{field_name: int(_scalar(tensors, name))})
            except ValueError as e:
                raise ValueError(f"input {name!r}: {e}") from None
    stream = _flag(tensors, "stream")
    exclude = _flag(tensors, "exclude_input_in_output") if "exclude_input_in_output" in tensors \
        else None
    if stream and exclude is False:
        raise ValueError("input 'exclude_input_in_output': when streaming, false is not allowed "
                         "(the prompt is never sent back in a stream)")
    return GenerateInputs(prompt_token_ids=ids.tolist(), params=params, stream=stream,
                          prepend_prompt=not stream and not exclude)


def _prompt_ids(tensors: dict[str, np.ndarray]) -> np.ndarray:
    ids = tensors.get("input_ids")
    if ids is None:
        raise ValueError("input 'input_ids' is required (through the ensemble: 'text_input')")
    ids = np.asarray(ids)
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise ValueError(f"input 'input_ids' must hold one prompt (batch 1), got shape "
                             f"{list(ids.shape)} (through ensemble: one text_input a request)")
        ids = ids[0]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input 'input_ids' must be integer token ids, got {ids.dtype} "
                         f"shape {list(ids.shape)}")
    if _flag(tensors, "text_has_nul"):
        raise ValueError("input 'text_input' holds a NUL character (U+0000), which the ONNX "
                         "tokenizer cannot read past; remove or replace it")
    if "input_lengths" in tensors:
        n = int(_scalar(tensors, "input_lengths"))
        if not 0 <= n <= len(ids):
            raise ValueError(f"input 'input_lengths' is {n}, outside [0, {len(ids)}]")
        ids = ids[:n]
    if len(ids) == 0:
        raise ValueError("the prompt is empty (input 'input_ids' has no tokens; "
                         "empty text_input?)")
    return ids


def _scalar(tensors: dict[str, np.ndarray], name: str):
    value = np.asarray(tensors[name])
    if value.size != 1:
        raise ValueError(f"input {name!r} must hold one value, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def _text(tensors: dict[str, np.ndarray], name: str) -> str:
    raw = _scalar(tensors, name)
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"input {name!r} is not UTF-8 text: {e}") from None
    return str(raw)


def _flag(tensors: dict[str, np.ndarray], name: str) -> bool:
    if name not in tensors:
        return False
    value = _scalar(tensors, name)
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"input {name!r} must be a BOOL, got {np.asarray(value).dtype}")
    return bool(value)

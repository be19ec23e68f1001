"""The `llm` model's input tensors -> what the engine needs, with errors that name the input.

Pure numpy, no Triton: the Triton adapter passes `{input name: numpy array}` and gets back a
`GenerateInputs` or a ValueError whose message says which input is wrong and why.

Inputs (the batch dimension of 1 is Triton's, from max_batch_size > 0):
    input_ids               INT64  [1, n]   prompt token ids (padded rows allowed: see lengths)
    input_lengths           INT64  [1, 1]   how many of input_ids are the prompt (optional)
    text_has_nul            BOOL   [1, 1]   the ensemble's text_input held a NUL (preprocessing's
                                            tokenizer cannot read it): the request is refused
    stream                  BOOL   [1, 1]   one response per delta (default false: one response)
    sampling_parameters     BYTES  [1, 1]   JSON object with SamplingParams names
    exclude_input_in_output BOOL   [1, 1]   without streaming, leave the prompt out of the text
    max_tokens              INT32  [1, 1]   overrides sampling_parameters' max_tokens
    cancel                  BOOL   [1, 1]   abort the live requests that carry this request's id
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pagedllm.sampling_params import SamplingParams


@dataclass
class GenerateInputs:
    prompt_token_ids: list[int] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    exclude_input_in_output: bool = False
    cancel: bool = False


def parse_inputs(tensors: dict[str, np.ndarray]) -> GenerateInputs:
    """Validates and converts one request's inputs (absent optional inputs are left out)."""
    if _flag(tensors, "cancel"):
        return GenerateInputs(cancel=True)
    ids = tensors.get("input_ids")
    if ids is None:
        raise ValueError("input 'input_ids' is required")
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
    params = SamplingParams()
    if "sampling_parameters" in tensors:
        raw = _scalar(tensors, "sampling_parameters")
        try:
            params = SamplingParams.from_json(raw if isinstance(raw, (bytes, str)) else str(raw))
        except ValueError as e:
            raise ValueError(f"input 'sampling_parameters': {e}") from None
    if "max_tokens" in tensors:
        max_tokens = int(_scalar(tensors, "max_tokens"))
        try:
            params = dataclasses.replace(params, max_tokens=max_tokens)
        except ValueError as e:
            raise ValueError(f"input 'max_tokens': {e}") from None
    return GenerateInputs(prompt_token_ids=ids.tolist(), params=params,
                          stream=_flag(tensors, "stream"),
                          exclude_input_in_output=_flag(tensors, "exclude_input_in_output"))


def _scalar(tensors: dict[str, np.ndarray], name: str):
    value = np.asarray(tensors[name])
    if value.size != 1:
        raise ValueError(f"input {name!r} must hold one value, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def _flag(tensors: dict[str, np.ndarray], name: str) -> bool:
    return name in tensors and bool(_scalar(tensors, name))

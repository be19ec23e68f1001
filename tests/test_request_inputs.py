"""parse_inputs: the llm model's tensors -> engine inputs, or a ValueError naming the input."""
from __future__ import annotations

import numpy as np
import pytest

from pagedllm_backends.pagedllm.request_inputs import parse_inputs


def _ids(*ids):
    return np.asarray([ids], dtype=np.int64)


def _text(s: str):
    return np.asarray([[s.encode()]], dtype=np.object_)


def test_full_request():
    got = parse_inputs({"input_ids": _ids(5, 6, 7, 0), "input_lengths": np.asarray([[3]]),
                        "stream": np.asarray([[True]]),
                        "sampling_parameters": _text('{"temperature": 0, "stop": ["x"]}'),
                        "max_tokens": np.asarray([[9]], np.int32),
                        "text_has_nul": np.asarray([[False]])})
    assert got.prompt_token_ids == [5, 6, 7]
    assert got.stream and not got.exclude_input_in_output and not got.cancel
    assert got.params.max_tokens == 9 and got.params.temperature == 0 and got.params.stop == ["x"]


def test_cancel_needs_nothing_else():
    assert parse_inputs({"cancel": np.asarray([[True]])}).cancel


@pytest.mark.parametrize("tensors, names", [
    ({}, "input_ids"),
    ({"input_ids": _ids(1, 2), "input_lengths": np.asarray([[0]])}, "empty"),
    ({"input_ids": _ids(1, 2), "input_lengths": np.asarray([[3]])}, "input_lengths"),
    ({"input_ids": np.zeros((2, 3), np.int64)}, "one prompt"),
    ({"input_ids": np.zeros((2, 3), np.int64), "text_has_nul": np.zeros((2, 1), bool)}, "one prompt"),
    ({"input_ids": _ids(1), "sampling_parameters": _text("{not json")}, "sampling_parameters"),
    ({"input_ids": _ids(1), "sampling_parameters": _text('{"bogus": 1}')}, "bogus"),
    ({"input_ids": _ids(1), "sampling_parameters": _text('{"max_tokens": -1}')}, "max_tokens"),
    ({"input_ids": _ids(1), "max_tokens": np.asarray([[0]], np.int32)}, "max_tokens"),
    ({"input_ids": _ids(1, 2), "text_has_nul": np.asarray([[True]])}, "'text_input' holds a NUL"),
])
def test_bad_inputs_name_the_problem(tensors, names):
    with pytest.raises(ValueError, match=names):
        parse_inputs(tensors)

"""parse_inputs: the llm model's tensors -> engine inputs, or a ValueError naming the input."""
from __future__ import annotations

import numpy as np
import pytest

from pagedllm_triton.request_inputs import parse_inputs


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
    assert got.stream and not got.prepend_prompt and not got.cancel
    assert got.params.max_tokens == 9 and got.params.temperature == 0 and got.params.stop == ["x"]


def test_vllm_backend_clients_send_numbers_as_strings():
    got = parse_inputs({"input_ids": _ids(1, 2),
                        "sampling_parameters": _text('{"temperature": "0.1", "top_p": "0.95", '
                                                     '"max_tokens": "100", "n": "2"}'),
                        "min_length": np.asarray([[7]], np.int32)})
    p = got.params
    assert (p.temperature, p.top_p, p.max_tokens, p.n, p.min_tokens) == (0.1, 0.95, 100, 2, 7)


@pytest.mark.parametrize("stream, exclude, prepend", [
    (False, None, True), (False, False, True), (False, True, False), (True, None, False),
    (True, True, False),
])
def test_the_prompt_leads_a_non_streamed_text_unless_excluded(stream, exclude, prepend):
    tensors = {"input_ids": _ids(1, 2), "stream": np.asarray([[stream]])}
    if exclude is not None:
        tensors["exclude_input_in_output"] = np.asarray([[exclude]])
    assert parse_inputs(tensors).prepend_prompt is prepend


def test_cancel_needs_nothing_else():
    got = parse_inputs({"cancel": _text("tok-123")})
    assert got.cancel and got.cancel_token == "tok-123"


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
    ({"cancel": _text("")}, "'cancel' is empty"),
    ({"input_ids": _ids(1), "stream": np.asarray([[True]]),
      "exclude_input_in_output": np.asarray([[False]])}, "when streaming, false"),
    ({"input_ids": _ids(1), "sampling_parameters": _text("[" * 10000 + "]" * 10000)},
     "'sampling_parameters'"),
    ({"input_ids": _ids(1), "sampling_parameters": _text('{"a":' * 10000 + "1" + "}" * 10000)},
     "'sampling_parameters'"),
    ({"input_ids": _ids(1, 2**40)}, r"token id 1099511627776 is outside the vocabulary \[0, 4096\)"),
    ({"input_ids": _ids(1), "min_length": np.asarray([[-1]], np.int32)}, "min_length"),
    ({"input_ids": _ids(1), "return_logprobs": np.asarray([[3]], np.int32)}, "return_logprobs"),
])
def test_bad_inputs_name_the_problem(tensors, names):
    with pytest.raises(ValueError, match=names):
        parse_inputs(tensors, vocab_size=4096)

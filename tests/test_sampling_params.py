"""SamplingParams: vLLM's defaults, every field's range and type, normalisation, from_json."""
from __future__ import annotations

import json

import pytest

from pagedllm.sampling_params import MAX_LOGPROBS, MAX_N, SamplingParams


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (16, 1.0, 1.0, 0, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert p.seed is None and p.logprobs is None
    assert p.stop == [] and p.stop_token_ids == []
    assert (p.ignore_eos, p.min_tokens, p.skip_special_tokens) == (False, 0, True)
    assert not p.is_greedy


@pytest.mark.parametrize("field, value", [
    ("max_tokens", 0), ("max_tokens", -3), ("n", 0), ("n", -1), ("n", MAX_N + 1),
    ("temperature", -1), ("temperature", -1e-9), ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("top_p", 0), ("top_p", 1.01), ("top_p", -0.5),
    ("top_k", -2),
    ("min_p", -0.1), ("min_p", 1.5),
    ("repetition_penalty", 0), ("repetition_penalty", -1.0),
    ("presence_penalty", 2.01), ("presence_penalty", -2.5),
    ("frequency_penalty", 3), ("frequency_penalty", -2.01),
    ("min_tokens", -1),
    ("logprobs", -1), ("logprobs", MAX_LOGPROBS + 1),
    ("seed", 2**64), ("seed", -(2**63) - 1),
    ("stop_token_ids", [-1]), ("stop_token_ids", [1, -5]),
])
def test_out_of_range_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("max_tokens", "16"), ("max_tokens", 16.0), ("max_tokens", True), ("n", 2.5), ("n", None),
    ("temperature", "0.5"), ("temperature", True), ("temperature", None),
    ("top_p", "1"), ("top_k", 2.0), ("top_k", False), ("top_k", None),
    ("min_p", [0.1]), ("repetition_penalty", "x"), ("presence_penalty", None),
    ("frequency_penalty", "0"), ("seed", 1.5), ("seed", True), ("min_tokens", None),
    ("min_tokens", 1.0), ("logprobs", "5"), ("logprobs", True),
    ("stop", 3), ("stop", ["a", 3]), ("stop", {"a": 1}),
    ("stop_token_ids", 5), ("stop_token_ids", [1.0]), ("stop_token_ids", [True]),
    ("stop_token_ids", "12"),
    ("ignore_eos", 1), ("ignore_eos", "true"), ("skip_special_tokens", None),
])
def test_wrong_type_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_must_not_exceed_max_tokens():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    assert SamplingParams(max_tokens=4, min_tokens=4).min_tokens == 4
    assert SamplingParams(max_tokens=None, min_tokens=1000).min_tokens == 1000


def test_message_names_the_allowed_range():
    with pytest.raises(ValueError, match=r"temperature must be >= 0, got -1"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        SamplingParams(top_p=0)


def test_edges_of_ranges_accepted():
    p = SamplingParams(max_tokens=1, temperature=0, top_p=1e-9, top_k=-1, min_p=1.0,
                       repetition_penalty=1e-3, presence_penalty=-2, frequency_penalty=2,
                       logprobs=0, seed=2**64 - 1)
    assert p.top_k == 0  # -1 normalised to "disabled"
    assert p.is_greedy
    assert isinstance(p.temperature, float) and isinstance(p.presence_penalty, float)
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(logprobs=MAX_LOGPROBS, seed=-(2**63)).logprobs == MAX_LOGPROBS


def test_is_greedy_threshold():
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=1e-6).is_greedy
    assert not SamplingParams(temperature=1e-3).is_greedy


@pytest.mark.parametrize("stop, expected", [
    (None, []), ("###", ["###"]), (["a", "bc"], ["a", "bc"]), (("x",), ["x"]), ([], []),
])
def test_stop_normalised_to_list(stop, expected):
    assert SamplingParams(stop=stop).stop == expected


@pytest.mark.parametrize("stop", ["", ["a", ""]])
def test_empty_stop_string_rejected(stop):
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=stop)


def test_stop_token_ids_normalised_to_list():
    assert SamplingParams(stop_token_ids=(3, 7)).stop_token_ids == [3, 7]
    assert SamplingParams(stop_token_ids=None).stop_token_ids == []


def test_from_json_round_trip_and_coercion():
    p = SamplingParams.from_json(json.dumps({
        "max_tokens": 32.0, "temperature": "0.7", "top_p": 0.9, "top_k": "40", "seed": 7,
        "stop": "\n\n", "stop_token_ids": [2.0, 5], "ignore_eos": "true",
        "skip_special_tokens": False, "logprobs": None}))
    assert p.max_tokens == 32 and isinstance(p.max_tokens, int)
    assert p.temperature == 0.7 and p.top_p == 0.9 and p.top_k == 40 and p.seed == 7
    assert p.stop == ["\n\n"] and p.stop_token_ids == [2, 5]
    assert p.ignore_eos is True and p.skip_special_tokens is False and p.logprobs is None


def test_from_json_accepts_dict_and_bytes():
    assert SamplingParams.from_json({"temperature": 0}).is_greedy
    assert SamplingParams.from_json(b'{"max_tokens": 3}').max_tokens == 3
    assert SamplingParams.from_json("{}") == SamplingParams()


def test_from_json_null_max_tokens_means_unlimited():
    assert SamplingParams.from_json('{"max_tokens": null}').max_tokens is None


def test_from_json_unknown_field_named():
    with pytest.raises(ValueError, match="use_beam_search"):
        SamplingParams.from_json('{"temperature": 0.5, "use_beam_search": true}')


@pytest.mark.parametrize("text", ['{"temperature": 0.5', "not json", "", b"\xff\xfe"])
def test_from_json_malformed(text):
    with pytest.raises(ValueError, match="JSON"):
        SamplingParams.from_json(text)


@pytest.mark.parametrize("text", ["[1, 2]", '"temperature"', "3"])
def test_from_json_must_be_object(text):
    with pytest.raises(ValueError, match="JSON object"):
        SamplingParams.from_json(text)


@pytest.mark.parametrize("data, field", [
    ({"max_tokens": 16.5}, "max_tokens"), ({"max_tokens": "lots"}, "max_tokens"),
    ({"top_k": "2.5"}, "top_k"), ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"), ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"stop_token_ids": [1.5]}, "stop_token_ids"), ({"seed": "abc"}, "seed"),
    ({"max_tokens": True}, "max_tokens"), ({"top_p": None}, "top_p"),
])
def test_from_json_bad_values_name_field(data, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams.from_json(data)


def test_from_json_big_seed_string_is_exact():
    assert SamplingParams.from_json({"seed": "18446744073709551615"}).seed == 2**64 - 1


@pytest.mark.parametrize("field, value, message", [
    ("stop", [f"s{i}" for i in range(17)], "stop must hold at most 16 strings, got 17"),
    ("stop", "x" * 257, "stop must hold strings of at most 256 characters, got one of 257"),
    ("stop_token_ids", list(range(257)), "stop_token_ids must hold at most 256 ids, got 257"),
])
def test_stop_lists_are_bounded(field, value, message):
    """Every generated piece of text is checked against each stop string: a request must not
    make that cost unbounded (a Triton client reaches this through sampling_parameters)."""
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=message):
        SamplingParams.from_json({field: value})
    SamplingParams(stop=["x" * 256] * 16, stop_token_ids=list(range(256)))  # at the limits

"""Property-based fuzzing of a live server: whatever a client sends, it gets an answer.

Hypothesis draws the tensors of `ensemble` and of `llm` (every input, right and wrong types of
values, missing ones, odd shapes) and `sampling_parameters` (known fields with values of every
JSON type, unknown fields, broken and deeply nested JSON, text that is not UTF-8). For each
request: a response or an error naming what is wrong, within 5 s. After the run: the server is
still ready, no KV block is held, and a greedy request gives the text it gave before.
"""
from __future__ import annotations

import json
import queue
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tritonclient.grpc")

from live_server import start_server, stream  # noqa: E402
from pagedllm.sampling_params import SamplingParams  # noqa: E402
from polling import wait_until  # noqa: E402

FIELDS = [f for f in SamplingParams.__dataclass_fields__]
INPUTS = ["text_input", "input_ids", "input_lengths", "stream", "sampling_parameters",
          "exclude_input_in_output", "max_tokens", "min_length", "cancel", "return_finish_reason",
          "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
          "return_num_output_tokens"]
# What an error may name: an input, a sampling parameter, or the prompt it read.
NAMES = INPUTS + FIELDS + ["prompt", "sampling parameter"]
GREEDY = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("fuzz"))
    s.greedy_text = stream(s.grpc_url, "def fib(n):", GREEDY).text
    yield s
    s.stop()


def _json_values(depth: int = 2):
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                       st.sampled_from(["0.7", "16", "true", "false", "-1", "nan", "1e309", ""]))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _sampling_text():
    known = st.dictionaries(st.sampled_from(FIELDS), _json_values(), max_size=6)
    unknown = st.dictionaries(st.text(max_size=8), _json_values(), max_size=2)
    as_json = st.tuples(known, unknown).map(lambda kv: json.dumps({**kv[0], **kv[1]}))
    broken = st.sampled_from(["{not json", "[1, 2]", "null", "7", '"text"', "{" * 3000 + "}" * 3000,
                              '{"a":' * 5000 + "1" + "}" * 5000, "\ufeff{}"])
    return st.one_of(as_json, broken, st.text(max_size=40)).map(str.encode) | st.binary(max_size=20)


def _value(kind: str):
    """A value for an input of `kind`: its own type or another."""
    # Mostly values a client means (token ids in the vocabulary, small counts), some not.
    token = st.one_of(st.integers(0, 4095), st.integers(0, 4095), st.integers(0, 4095),
                      st.integers(-2**40, 2**40))
    count = st.one_of(st.integers(1, 24), st.integers(1, 24), st.integers(-2**31, 2**31 - 1))
    text = st.text(max_size=300).map(str.encode)
    return {"BYTES": st.one_of(text, text, text, st.binary(max_size=40)),
            "BOOL": st.booleans(), "INT32": count,
            "INT64": st.lists(token, min_size=0, max_size=20)}[kind]


def _tensor(name: str, kind: str, value, batched: bool):
    import tritonclient.grpc as grpcclient
    if kind == "INT64":
        arr = np.asarray(value, dtype=np.int64).reshape(-1)
    elif kind == "BYTES":
        arr = np.array([value], dtype=np.object_)
    elif kind == "BOOL":
        arr = np.array([value], dtype=bool)
    else:
        arr = np.array([value], dtype=np.int32)
    if batched:
        arr = arr[None]
    t = grpcclient.InferInput(name, list(arr.shape), kind)
    t.set_data_from_numpy(arr)
    return t


ENSEMBLE_INPUTS = {"text_input": "BYTES", "stream": "BOOL", "sampling_parameters": "BYTES",
                   "exclude_input_in_output": "BOOL", "max_tokens": "INT32", "min_length": "INT32",
                   "cancel": "BYTES", "return_logprobs": "BOOL", "return_finish_reason": "BOOL"}
LLM_INPUTS = {"input_ids": "INT64", "input_lengths": "INT64", "stream": "BOOL",
              "sampling_parameters": "BYTES", "exclude_input_in_output": "BOOL",
              "max_tokens": "INT32", "min_length": "INT32", "cancel": "BYTES"}


def _request(draw, inputs: dict[str, str], required: str) -> dict:
    optional = sorted(set(inputs) - {required, "cancel"})
    chosen = draw(st.lists(st.sampled_from(optional), unique=True, max_size=len(optional)))
    if draw(st.integers(0, 9)):  # the prompt is there 9 times in 10, a cancel 1 in 10
        chosen.append(required)
    if not draw(st.integers(0, 9)):
        chosen.append("cancel")
    request = {}
    for name in chosen:
        kind = inputs[name]
        if name == "sampling_parameters":
            request[name] = ("BYTES", draw(_sampling_text()))
        elif name == "input_lengths":
            request[name] = ("INT64", [draw(st.integers(-5, 40))])
        else:
            request[name] = (kind, draw(_value(kind)))
    return request


@st.composite
def ensemble_requests(draw):
    return _request(draw, ENSEMBLE_INPUTS, "text_input")


@st.composite
def llm_requests(draw):
    return _request(draw, LLM_INPUTS, "input_ids")


def _bounded(request: dict) -> dict:
    """Keeps a request quick to answer: non-streamed ones ask for few tokens (a response within
    5 s must be possible on this machine); the rest is left as drawn."""
    streamed = request.get("stream", ("BOOL", False))[1]
    if not streamed:
        request["max_tokens"] = ("INT32", min(request.get("max_tokens", ("INT32", 8))[1], 8))
    return request


def _send(server, model: str, request: dict) -> tuple[str, str | None, str]:
    """('response' | 'error' | 'final', error text, cancel token) of the first answer in 5 s."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        batched = model == "llm"
        tensors = [_tensor(name, kind, value, batched) for name, (kind, value) in request.items()]
        client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        result, error = answers.get(timeout=5)
        if error is not None:
            return "error", str(error), ""
        token = result.as_numpy("cancel_token")
        if not result.get_response().outputs:
            return "final", None, ""
        return "response", None, token.reshape(-1)[0].decode() if token is not None else ""
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def _check(server, model: str, request: dict) -> None:
    kind, error, token = _send(server, model, _bounded(request))
    if kind == "error":
        assert any(name in error for name in NAMES), f"the error names nothing: {error!r}"
        assert "Traceback" not in error
    elif token:
        from pagedllm_clients.cancel import cancel_request
        try:  # don't let generations pile up behind the fuzzer
            cancel_request(server.grpc_url, token, model)
        except RuntimeError:
            pass  # it had finished


def _healthy_afterwards(server) -> None:
    assert server.ready()
    assert wait_until(lambda: server.metric("pagedllm:kv_cache_usage_perc") == 0, timeout=5)
    assert stream(server.grpc_url, "def fib(n):", GREEDY).text == server.greedy_text


@FUZZ
@given(request=ensemble_requests())
def test_fuzz_ensemble(server, request):
    if "text_input" not in request:  # Triton itself answers that with an empty final response
        request["text_input"] = ("BYTES", b"hello")
    _check(server, "ensemble", request)


@FUZZ
@given(request=llm_requests())
def test_fuzz_llm(server, request):
    _check(server, "llm", request)


def test_the_server_is_whole_after_the_fuzzing(server):
    time.sleep(0.5)
    _healthy_afterwards(server)

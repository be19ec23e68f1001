"""RequestResponses: the llm model's output arrays as vllm_backend shapes them (no server)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pagedllm.outputs import StreamDelta
from pagedllm.tokenizer import Tokenizer
from pagedllm_triton.responses import RequestResponses
from pagedllm_triton.text_ids import TextIds
from pagedllm_tools import ROOT


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(str(ROOT / "models" / "default"))


def _responses(tokenizer, stream=True, n=1, want_logprobs=False, prompt_ids=()):
    return RequestResponses(text_ids=TextIds(tokenizer, True), names=TextIds(tokenizer, False),
                            stream=stream, n=n, want_logprobs=want_logprobs,
                            prompt_ids=list(prompt_ids), num_input_tokens=3, cancel_token="tok")


def _decode(tokenizer, output_ids: np.ndarray) -> list[str]:
    return [tokenizer.decode([int(t) for t in row], skip_special_tokens=True)
            for row in output_ids[0]]


def test_a_stream_sends_deltas_and_vllm_backends_markers(tokenizer):
    ids = tokenizer.encode(" hello world")
    r = _responses(tokenizer)
    first = r.update([StreamDelta(request_id="x", token_ids=ids[:1], text=" hello",
                                  num_output_tokens=1)])
    last = r.update([StreamDelta(request_id="x", token_ids=ids[1:], text=" world", finished=True,
                                 finish_reason="length", num_output_tokens=len(ids))])
    assert _decode(tokenizer, first["output_ids"]) + _decode(tokenizer, last["output_ids"]) \
        == [" hello", " world"]
    assert first["finish_reason"].tolist() == [[b"None"]]
    assert last["finish_reason"].tolist() == [[b"length"]]
    assert first["num_output_tokens"].tolist() == [[1]] and first["num_output_tokens"].dtype == np.uint32
    assert last["num_output_tokens"].tolist() == [[len(ids) - 1]]  # this response's tokens only
    assert last["num_input_tokens"].tolist() == [[3]] and last["cancel_token"].tolist() == [[b"tok"]]
    assert last["logprobs"].tolist() == [[b"null"]] and last["cumulative_logprob"][0, 0] == 0.0


def test_nothing_to_say_sends_nothing(tokenizer):
    r = _responses(tokenizer)
    assert r.update([StreamDelta(request_id="x", text="")]) is None
    whole = _responses(tokenizer, stream=False)
    assert whole.update([StreamDelta(request_id="x", token_ids=[5], text=tokenizer.decode([5]),
                                     num_output_tokens=1)]) is None


def test_one_response_without_streaming_with_the_prompt_first(tokenizer):
    prompt = tokenizer.encode("def f")
    body = tokenizer.encode("(x):")
    r = _responses(tokenizer, stream=False, prompt_ids=prompt)
    assert r.update([StreamDelta(request_id="x", token_ids=body[:1],
                                 text=tokenizer.decode(body[:1]), num_output_tokens=1)]) is None
    out = r.update([StreamDelta(request_id="x", token_ids=body[1:], text=tokenizer.decode(body[1:]),
                                finished=True, finish_reason="stop", num_output_tokens=len(body))])
    assert _decode(tokenizer, out["output_ids"]) == ["def f(x):"]
    assert out["num_output_tokens"].tolist() == [[len(body)]]


def test_n_completions_fill_one_row_each(tokenizer):
    a, b = tokenizer.encode(" cat"), tokenizer.encode(" dog house")
    r = _responses(tokenizer, n=2)
    out = r.update([StreamDelta(request_id="x", index=1, token_ids=b, text=" dog house",
                                finish_reason="stop", num_output_tokens=len(b)),
                    StreamDelta(request_id="x", index=0, token_ids=a, text=" cat",
                                num_output_tokens=len(a))])
    assert out["output_ids"].shape == (1, 2, max(len(a), len(b)))
    assert _decode(tokenizer, out["output_ids"]) == [" cat", " dog house"]
    assert out["finish_reason"].tolist() == [[b"None", b"stop"]]
    assert out["num_output_tokens"].tolist() == [[len(a), len(b)]]


def test_logprobs_as_vllm_backend_writes_them(tokenizer):
    ids = tokenizer.encode(" hello")
    r = _responses(tokenizer, want_logprobs=True)
    lp = {ids[0]: -0.5, 7: -0.25, 9: -3.0}
    out = r.update([StreamDelta(request_id="x", token_ids=ids[:1], text=tokenizer.decode(ids[:1]),
                                logprobs=[lp], num_output_tokens=1)])
    [entries] = json.loads(out["logprobs"][0, 0])
    assert entries[str(ids[0])] == {"logprob": -0.5, "rank": 2,
                                    "decoded_token": tokenizer.decode([ids[0]])}
    assert entries["7"]["rank"] == 1 and entries["9"]["rank"] == 3
    assert list(entries)[0] == str(ids[0])  # the sampled token first (vLLM's order), rank 2
    assert out["cumulative_logprob"][0, 0] == pytest.approx(-0.5)

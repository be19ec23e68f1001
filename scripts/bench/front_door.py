"""The front door's own cost per streamed token, on this machine's CPU: decoding one Triton
response (`parse_reply`, against the generic `InferResult.as_numpy` reader it replaced) and
building the SSE chunk of /v1/completions. No server: the responses are built the way
tritonserver 2.51 sends the ensemble's (seven outputs in raw contents, captured from a live one).

    python -m pagedllm_tools.bench.front_door [--n 1] [--repeats 20000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.grpc._infer_result import InferResult

from pagedllm_openai.schemas import CompletionChoice, CompletionResponse
from pagedllm_openai.sse import event
from pagedllm_openai.triton_client import _parse_reply_slow, parse_reply


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)


def ensemble_response(texts: list[str], finish: list[str | None], logprobs: list | None = None,
                      num_input_tokens: int = 37, cancel_token: str = "58_tuWWv8ioglswF5Vl6jQ"):
    """One streamed ensemble response, as tritonserver lays it out (n = len(texts))."""
    n = len(texts)
    outputs = [
        ("cancel_token", "BYTES", [1], _bytes_tensor([cancel_token])),
        ("num_input_tokens", "UINT32", [1], np.array([num_input_tokens], "<u4").tobytes()),
        ("logprobs", "BYTES", [n], _bytes_tensor([json.dumps(x) for x in (logprobs or [None] * n)])),
        ("cumulative_logprob", "FP32", [n], np.zeros(n, "<f4").tobytes()),
        ("finish_reason", "BYTES", [n], _bytes_tensor([str(f) for f in finish])),
        ("num_output_tokens", "UINT32", [n], np.ones(n, "<u4").tobytes()),
        ("text_output", "BYTES", [n], _bytes_tensor(texts)),
    ]
    response = service_pb2.ModelInferResponse(model_name="ensemble", id="openai-x")
    for name, kind, shape, raw in outputs:
        response.outputs.add(name=name, datatype=kind, shape=shape)
        response.raw_output_contents.append(raw)
    return InferResult(response)


def per_call_us(fn, repeats: int) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1, help="completions per request")
    ap.add_argument("--repeats", type=int, default=20000)
    a = ap.parse_args()
    result = ensemble_response([" fib"] * a.n, [None] * a.n)
    reply = parse_reply(result)
    assert reply == _parse_reply_slow(result, None)

    def chunk() -> str:
        choices = [CompletionChoice(index=i, text=t, logprobs=None, finish_reason=None)
                   for i, t in enumerate(reply.texts)]
        return event(CompletionResponse(id="cmpl-x", created=1, model="m",
                                        choices=choices).model_dump_json())

    figures = {"parse_reply_us": per_call_us(lambda: parse_reply(result), a.repeats),
               "as_numpy_reader_us": per_call_us(lambda: _parse_reply_slow(result, None), a.repeats),
               "sse_chunk_us": per_call_us(chunk, a.repeats)}
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

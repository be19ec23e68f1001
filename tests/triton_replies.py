"""Streamed ensemble responses built the way tritonserver 2.51 lays them out (raw contents),
for testing the OpenAI service's readers without a server."""
from __future__ import annotations

import json

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.grpc._infer_result import InferResult


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)


def ensemble_response(texts: list[str], finish: list[str | None], logprobs: list | None = None,
                      num_input_tokens: int = 37, cancel_token: str = "58_tuWWv8ioglswF5Vl6jQ"):
    """One streamed ensemble response (n = len(texts)), seven outputs as captured from a live one."""
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

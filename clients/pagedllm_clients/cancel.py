"""Cancel a running request, on any path, with the cancel_token its responses carry.

Triton 2.51 does not pass a cancelled `ensemble` stream on to the running `llm` step: the engine
would keep generating (and holding KV blocks) for a client that has gone. So a client that stops
a stream also sends this: a request whose input `cancel` holds the `cancel_token` that every
response of its request carries (a random token the server issued: no one else knows it, so no
client can cancel another's request). The `llm` model aborts the request and answers at once
(finish_reason "abort"); an unknown or empty token is an error.

    python clients/pagedllm_clients/cancel.py CANCEL_TOKEN [--url localhost:8001] [--model ensemble]
"""
from __future__ import annotations

import argparse
import os
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def cancel_inputs(cancel_token: str, model: str = "ensemble") -> list:
    """The input tensors of a cancel: `cancel` = the token (and an empty text_input, which the
    ensemble requires). The ensemble takes vllm_backend's shapes [1]; `llm` has a batch
    dimension: [1, 1]."""
    shape = [1] if model == "ensemble" else [1, 1]
    values = [("cancel", np.array([cancel_token.encode()], dtype=np.object_), "BYTES")]
    if model == "ensemble":
        values.append(("text_input", np.array([b""], dtype=np.object_), "BYTES"))
    inputs = []
    for name, value, dtype in values:
        tensor = grpcclient.InferInput(name, shape, dtype)
        tensor.set_data_from_numpy(value.reshape(shape))
        inputs.append(tensor)
    return inputs


def cancel_request(url: str, cancel_token: str, model: str = "ensemble",
                   timeout: float = 10.0) -> None:
    """Aborts the live request whose responses carried `cancel_token`; returns once the server
    confirms (RuntimeError with the server's reason if it refuses)."""
    if not cancel_token:
        raise ValueError("cancelling needs the cancel_token the request's responses carry")
    client = grpcclient.InferenceServerClient(url)
    replies: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: replies.put(error))
    try:
        client.async_stream_infer(model, cancel_inputs(cancel_token, model))
        error = replies.get(timeout=timeout)
        if error is not None:
            raise RuntimeError(f"cancel failed: {error}")
    finally:
        client.stop_stream()
        client.close()


def default_grpc_url() -> str:
    """localhost on GRPC_PORT (8001): the port `pagedllm serve` read from the same variable."""
    return f"localhost:{os.environ.get('GRPC_PORT') or 8001}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cancel_token", help="the cancel_token output of the request's responses")
    parser.add_argument("--url", default=default_grpc_url(),
                        help="Triton gRPC HOST:PORT (default %(default)s; env GRPC_PORT)")
    parser.add_argument("--model", default="ensemble", choices=["ensemble", "llm"])
    args = parser.parse_args()
    cancel_request(args.url, args.cancel_token, args.model)
    print("cancelled")
    return 0


if __name__ == "__main__":
    sys.exit(main())

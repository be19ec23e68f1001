"""Cancel a running request by id, on any path.

Triton 2.51 does not pass a cancelled `ensemble` stream on to the running `llm` step: the engine
would keep generating (and holding KV blocks) for a client that has gone. So a client that stops
a stream also sends this: a request with the same request id and `cancel` = true, which the `llm`
model answers at once (finish_reason "abort") after aborting the live requests with that id.

    pagedllm-cancel REQUEST_ID [--url localhost:8001] [--model ensemble]
"""
from __future__ import annotations

import argparse
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def cancel_request(url: str, request_id: str, model: str = "ensemble", timeout: float = 10.0) -> None:
    """Aborts the live requests that carry `request_id`; returns once the server confirms."""
    if not request_id:
        raise ValueError("cancelling needs the request id the request was sent with")
    client = grpcclient.InferenceServerClient(url)
    replies: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: replies.put(error))
    inputs = []
    for name, value, dtype in (("cancel", np.array([[True]]), "BOOL"),
                               ("text_input", np.array([[b""]], dtype=np.object_), "BYTES")):
        if name == "text_input" and model != "ensemble":
            continue
        tensor = grpcclient.InferInput(name, [1, 1], dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    try:
        client.async_stream_infer(model, inputs, request_id=request_id)
        error = replies.get(timeout=timeout)
        if error is not None:
            raise RuntimeError(f"cancel of {request_id!r} failed: {error}")
    finally:
        client.stop_stream()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("request_id")
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--model", default="ensemble", choices=["ensemble", "llm"])
    args = parser.parse_args()
    cancel_request(args.url, args.request_id, args.model)
    print(f"cancelled {args.request_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Send one prompt to the `ensemble` model over gRPC and print the text as it streams.

    pagedllm-generate "def fib(n):"
    pagedllm-generate "Once upon a time" --max-tokens 64 --temperature 0.8 --seed 1
    pagedllm-generate "Hello" --no-stream --stop "." --stop "!"

The completion goes to stdout (without the prompt); the finish reason and token counts go to
stderr, so `> out.txt` keeps only the text. Exit status: 0 done, 1 the request failed, 2 the server
or model is not reachable.
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import uuid
from dataclasses import dataclass

import numpy as np

try:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("clients/pagedllm_clients/generate.py needs tritonclient[grpc]: pip install -r requirements-dev.txt")

from pagedllm_clients.cancel import cancel_request, default_grpc_url


@dataclass
class Reply:
    """One response: a piece of text (the first completion's), and what came with it.

    `finish_reason` is "" until the completion ends (the server sends "None" before, as Triton's
    vllm_backend does); `num_output_tokens` counts the tokens of this response alone.
    """

    text: str
    final: bool
    finish_reason: str = ""
    num_input_tokens: int | None = None
    num_output_tokens: int = 0
    cancel_token: str = ""


def sampling_parameters(args: argparse.Namespace) -> dict:
    """The `sampling_parameters` JSON object for the flags that were given (vLLM names)."""
    params: dict = {}
    for name in ("temperature", "top_p", "top_k", "seed"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    if args.stop:
        params["stop"] = [unescape(s) for s in args.stop]
    if args.ignore_eos:
        params["ignore_eos"] = True
    return params


def unescape(text: str) -> str:
    """A stop string as typed in a shell: backslash escapes read as such (`--stop "\\n\\n"` is
    two newlines; a shell's double quotes keep the backslashes), other characters unchanged."""
    return text.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


def build_inputs(prompt: str, stream: bool, max_tokens: int, params: dict,
                 exclude_input: bool = True) -> list:
    """The ensemble's input tensors for one request: vllm_backend's shape [1] each."""

    def tensor(name: str, value: np.ndarray, dtype: str):
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    return [
        tensor("text_input", np.array([prompt.encode("utf-8")], dtype=object), "BYTES"),
        tensor("stream", np.array([stream], dtype=bool), "BOOL"),
        tensor("sampling_parameters", np.array([json.dumps(params).encode()], dtype=object),
               "BYTES"),
        tensor("exclude_input_in_output", np.array([exclude_input], dtype=bool), "BOOL"),
        tensor("max_tokens", np.array([max_tokens], dtype=np.int32), "INT32"),
    ]


def parse_result(result) -> Reply:
    """A Reply from one tritonclient InferResult (an empty final response has no tensors)."""
    params = result.get_response().parameters
    final = "triton_final_response" in params and params["triton_final_response"].bool_param
    text_out = result.as_numpy("text_output")
    if text_out is None:
        return Reply(text="", final=final)
    reason = result.as_numpy("finish_reason")
    reason = _str(reason) if reason is not None else ""
    n_in, n_out = result.as_numpy("num_input_tokens"), result.as_numpy("num_output_tokens")
    token = result.as_numpy("cancel_token")
    return Reply(
        text=_str(text_out),
        final=final,
        finish_reason="" if reason == "None" else reason,
        num_input_tokens=int(n_in.reshape(-1)[0]) if n_in is not None else None,
        num_output_tokens=int(n_out.reshape(-1)[0]) if n_out is not None else 0,
        cancel_token=_str(token) if token is not None else "",
    )


def _str(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_server(client, url: str, model: str) -> None:
    """Exits with status 2 and a clear message if the server or the model is not ready."""
    try:
        live = client.is_server_live()
    except InferenceServerException as e:
        sys.exit(_unreachable(url, e))
    if not live:
        sys.exit(_unreachable(url, "server is not live"))
    try:
        ready = client.is_model_ready(model)
    except InferenceServerException as e:
        sys.exit(_unreachable(url, e))
    if not ready:
        sys.stderr.write(f"error: model {model!r} is not ready on {url} "
                         "(still loading, or not in the model repository)\n")
        sys.exit(2)


def _unreachable(url: str, why) -> int:
    sys.stderr.write(f"error: cannot reach Triton's gRPC endpoint at {url}: {why}\n"
                     "Is the server running? Start it with `make serve` (gRPC port 8001 by "
                     "default) or pass --url HOST:PORT.\n")
    return 2


def generate(args: argparse.Namespace) -> int:
    """Runs one request and prints it; returns the exit status."""
    client = grpcclient.InferenceServerClient(url=args.url)
    check_server(client, args.url, args.model)
    replies: queue.Queue = queue.Queue()
    request_id = f"generate-{uuid.uuid4().hex[:12]}"
    cancel_token, output_tokens = "", 0
    client.start_stream(callback=lambda result, error: replies.put((result, error)),
                        stream_timeout=args.timeout)
    try:
        client.async_stream_infer(
            args.model,
            build_inputs(args.prompt, not args.no_stream, args.max_tokens, sampling_parameters(args)),
            request_id=request_id,
            enable_empty_final_response=True,
        )
        last = Reply(text="", final=False)
        while True:
            try:
                result, error = replies.get(timeout=args.timeout)
            except queue.Empty:
                sys.stderr.write(f"\nerror: no response within {args.timeout} s\n")
                return 1
            if error is not None:
                sys.stderr.write(f"\nerror: {error}\n")
                return 1
            reply = parse_result(result)
            cancel_token = reply.cancel_token or cancel_token
            output_tokens += reply.num_output_tokens
            if reply.text:
                sys.stdout.write(reply.text)
                sys.stdout.flush()
            if reply.finish_reason:
                last = reply
            if reply.final:
                break
    except KeyboardInterrupt:
        client.stop_stream(cancel_requests=True)
        # Triton 2.51 does not pass an ensemble cancellation on to the llm step: cancel by the
        # token the responses carry (none yet: the request ends by itself, unseen).
        if cancel_token:
            cancel_request(args.url, cancel_token, args.model)
        sys.stderr.write("\ncancelled\n")
        return 130
    finally:
        client.stop_stream()
        client.close()
    sys.stdout.write("\n")
    sys.stderr.write(f"[finish_reason={last.finish_reason or '?'} "
                     f"input_tokens={last.num_input_tokens} output_tokens={output_tokens}]\n")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--url", default=default_grpc_url(),
                   help="Triton gRPC HOST:PORT (default %(default)s; env GRPC_PORT)")
    p.add_argument("--model", default="ensemble", help="model name (default %(default)s)")
    p.add_argument("--no-stream", action="store_true", help="one response with the whole text")
    p.add_argument("--max-tokens", type=int, default=128, help="default %(default)s")
    p.add_argument("--temperature", type=float, help="0 = greedy (server default 1.0)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, help="per-request seed: the same seed gives the same text")
    p.add_argument("--stop", action="append",
                   help='stop string (repeatable); backslash escapes count: --stop "\\n\\n"')
    p.add_argument("--ignore-eos", action="store_true", help="keep going past EOS")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for each response (default %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The `pagedllm-generate` console script."""
    return generate(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The front door's own cost per streamed token, on this machine's CPU.

Default: decoding one Triton response (`parse_reply`, against the generic `InferResult.as_numpy`
reader it replaced) and building the SSE chunk of /v1/completions, in this process. The responses
are built the way tritonserver 2.51 sends the ensemble's (seven outputs in raw contents, as
captured from a live one).

`--live`: the real front door (`pagedllm_openai.server`, its own process) in front of a stand-in
for Triton that streams canned responses as fast as it can (no engine), driven by streaming
/v1/completions requests. It reports the front door process's CPU time per streamed token (from
/proc, so it holds on a busy machine) and the tokens per second it passed.

    python -m pagedllm_tools.bench.front_door [--n 1] [--repeats 20000]
    python -m pagedllm_tools.bench.front_door --live [--concurrency 64] [--requests 512]
        [--tokens 128] [--workers 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.grpc._infer_result import InferResult

from pagedllm_openai.schemas import CompletionChoice, CompletionResponse
from pagedllm_openai.sse import event
from pagedllm_openai.replies import parse_reply, parse_reply_generic


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


# ---- --live: the front door between a stand-in Triton and streaming clients ----------------------

def fake_triton(port: int) -> None:
    """A gRPC server that answers ModelStreamInfer with max_tokens canned responses a request."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelStreamInfer(self, request_iterator, context):
            async for request in request_iterator:
                names = [i.name for i in request.inputs]
                if "sampling_parameters" not in names:
                    continue  # a cancel: nothing to stop here
                raw = request.raw_input_contents[names.index("sampling_parameters")]
                tokens = json.loads(raw[4:]).get("max_tokens") or 16
                for i in range(tokens):
                    last = i == tokens - 1
                    result = ensemble_response([" a"], ["length" if last else None])
                    response = result.get_response()
                    response.id = request.id
                    response.parameters["triton_final_response"].bool_param = last
                    yield service_pb2.ModelStreamInferResponse(infer_response=response)

        async def ModelReady(self, request, context):
            return service_pb2.ModelReadyResponse(ready=True)

    async def serve() -> None:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its live children (the workers of --workers N)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _drive(url: str, concurrency: int, requests: int, tokens: int) -> int:
    """Streams `requests` completions, `concurrency` at a time; returns the tokens received
    (each canned token is the two characters " a")."""
    import httpx

    todo = iter(range(requests))
    received = 0

    async def worker(client) -> None:
        nonlocal received
        for _ in todo:
            body = {"model": "default", "prompt": "def fib", "max_tokens": tokens, "stream": True}
            async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):  # queued replies leave merged: count tokens
                        received += json.loads(line[6:])["choices"][0]["text"].count(" a")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return received


def live(concurrency: int, requests: int, tokens: int, workers: int = 1) -> dict:
    from pagedllm_tools import ROOT

    grpc_port, port = _free_port(), _free_port()
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    fake = subprocess.Popen([sys.executable, "-m", "pagedllm_tools.bench.front_door",
                             "--fake-triton", str(grpc_port)], stdout=log, stderr=log)
    door = subprocess.Popen(
        [sys.executable, "-m", "pagedllm_openai.server", "--model", str(ROOT / "models" / "default"),
         "--triton-grpc-url", f"127.0.0.1:{grpc_port}", "--port", str(port),
         # (a slot comes back as the stream closes, after the client saw the end: room for that)
         "--max-concurrent-per-client", str(2 * concurrency), "--log-level", "warning",
         "--workers", str(workers)],
        stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/v1/health/live", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or door.poll() is not None:
                    raise RuntimeError(f"the front door did not start: see {log.name}")
                time.sleep(0.3)
        asyncio.run(_drive(url, concurrency, concurrency, 4))  # warm-up
        cpu0, t0 = _cpu_s(door.pid), time.perf_counter()
        chunks = asyncio.run(_drive(url, concurrency, requests, tokens))
        wall, cpu = time.perf_counter() - t0, _cpu_s(door.pid) - cpu0
    finally:
        for p in (door, fake):
            p.terminate()
            p.wait(timeout=30)
    if chunks != requests * tokens:
        raise RuntimeError(f"got {chunks} tokens, expected {requests * tokens}")
    return {"workers": workers, "concurrency": concurrency, "requests": requests,
            "tokens_per_request": tokens,
            "tokens_s": chunks / wall, "front_door_cpu_us_per_token": cpu / chunks * 1e6,
            "front_door_cpu_share": cpu / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1, help="completions per request")
    ap.add_argument("--repeats", type=int, default=20000)
    ap.add_argument("--live", action="store_true", help="the front door process, end to end")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1, help="the front door's --workers")
    ap.add_argument("--fake-triton", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.fake_triton:
        return fake_triton(a.fake_triton)
    if a.live:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                          for k, v in live(a.concurrency, a.requests, a.tokens,
                                           a.workers).items()}))
        return
    result = ensemble_response([" fib"] * a.n, [None] * a.n)
    reply = parse_reply(result)
    assert reply == parse_reply_generic(result, None)

    def chunk() -> str:
        choices = [CompletionChoice(index=i, text=t, logprobs=None, finish_reason=None)
                   for i, t in enumerate(reply.texts)]
        return event(CompletionResponse(id="cmpl-x", created=1, model="m",
                                        choices=choices).model_dump_json())

    figures = {"parse_reply_us": per_call_us(lambda: parse_reply(result), a.repeats),
               "as_numpy_reader_us": per_call_us(lambda: parse_reply_generic(result, None), a.repeats),
               "sse_chunk_us": per_call_us(chunk, a.repeats)}
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

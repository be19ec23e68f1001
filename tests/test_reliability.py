"""Live: a dead engine or stub is noticed, reported unready and replaced; nothing is left behind.

One tritonserver with make serve's watchdog (tests/live_server.py). Each test kills a process
the server depends on, the way a crash or an out-of-memory kill would, and checks what a client
sees, what readiness says, and that the server comes back to serve the same greedy text.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")

from live_server import start_server, stream  # noqa: E402
from polling import wait_until  # noqa: E402
from pagedllm_tools.processes import descendants  # noqa: E402

GREEDY = {"max_tokens": 16, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("reliability"), watchdog=True, probe_every=1.0)
    yield s
    s.stop()


def _engine_pids(server) -> list[int]:
    return [p for p, cmd in descendants(server.process.pid).items() if "spawn_main" in cmd]


def _stub_pid(server, model: str) -> int:
    [pid] = [p for p, cmd in descendants(server.process.pid).items()
             if "triton_python_backend_stub" in cmd and f"/{model}/" in cmd]
    return pid


def _serving_again(server, expected: str, timeout: float) -> float:
    """Seconds until the ensemble answers `expected` again (inf if it never did)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.ready() and server.model_ready("ensemble"):
            r = stream(server.grpc_url, "def fib(n):", GREEDY, timeout=30)
            if r.error is None and r.text == expected:
                return time.monotonic() - t0
        time.sleep(0.5)
    return float("inf")


def test_a_killed_engine_fails_its_streams_reports_unready_and_comes_back(server):
    expected = stream(server.grpc_url, "def fib(n):", GREEDY).text
    [engine] = _engine_pids(server)
    seen: dict = {}

    def long_stream():
        seen["result"] = stream(server.grpc_url, "Once upon a time", {"max_tokens": 900,
                                                                       "ignore_eos": True},
                                on_response=lambda r: seen.setdefault("first", time.monotonic()))
        seen["end"] = time.monotonic()

    thread = threading.Thread(target=long_stream, daemon=True)
    thread.start()
    assert wait_until(lambda: "first" in seen, timeout=30)
    killed = time.monotonic()
    os.kill(engine, signal.SIGKILL)
    thread.join(timeout=10)
    assert seen["result"].error is not None and "engine process exited" in seen["result"].error
    assert seen["end"] - killed < 1.0, f"the stream's error came {seen['end'] - killed:.2f} s after"
    assert wait_until(lambda: not server.model_ready("llm"), timeout=5), "llm still reports ready"
    back = _serving_again(server, expected, timeout=60)
    assert back < 60, "not serving the same greedy text again within 60 s"
    assert server.metric("pagedllm:engine_restarts_total") == 1
    # (the watchdog's one-token probes come and go: wait for a moment without one)
    assert wait_until(lambda: server.metric("pagedllm:kv_cache_usage_perc") == 0, timeout=5)
    assert not Path(f"/proc/{engine}").exists() and len(_engine_pids(server)) == 1, "orphan"


def test_a_killed_postprocessing_stub_is_replaced(server):
    expected = stream(server.grpc_url, "def fib(n):", GREEDY).text
    stub = _stub_pid(server, "postprocessing")
    os.kill(stub, signal.SIGKILL)
    back = _serving_again(server, expected, timeout=60)
    assert back < 60, "the ensemble did not serve again"
    assert _stub_pid(server, "postprocessing") != stub
    assert server.watchdog.restarts("postprocessing") >= 1


def test_overload_is_refused_quickly_and_the_admitted_complete_exactly(server):
    """2,000 streams at once, max_queue_len 256 (make serve's default): the engine runs 256 and
    queues 256; the rest are refused at once with the overload error; every admitted request
    completes with its unloaded output."""
    import asyncio

    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    from pagedllm import LLM, SamplingParams
    from live_server import DEFAULT_MODEL, ENGINE_ARGS

    n, params = 2000, {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
    prompts = [f"def f{i}(x):" for i in range(n)]

    def inputs(prompt: str) -> list:
        values = [("text_input", np.array([prompt.encode()], dtype=np.object_), "BYTES"),
                  ("stream", np.array([False]), "BOOL"),
                  ("exclude_input_in_output", np.array([True]), "BOOL"),
                  ("sampling_parameters", np.array([json.dumps(params).encode()], dtype=np.object_),
                   "BYTES")]
        out = []
        for name, value, dtype in values:
            t = grpcclient.InferInput(name, [1], dtype)
            t.set_data_from_numpy(value)
            out.append(t)
        return out

    async def one(client, prompt: str):
        t0 = time.monotonic()

        async def requests():
            yield {"model_name": "ensemble", "inputs": inputs(prompt)}
            await asyncio.sleep(120)

        async for result, error in client.stream_infer(requests()):
            if error is not None:
                return "error", str(error), time.monotonic() - t0
            return "ok", result.as_numpy("text_output")[0].decode(), time.monotonic() - t0

    async def burst():
        clients = [grpcclient.InferenceServerClient(server.grpc_url) for _ in range(20)]
        try:
            return await asyncio.gather(*(one(clients[i % 20], p) for i, p in enumerate(prompts)))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    try:
        outcomes = asyncio.run(asyncio.wait_for(burst(), timeout=300))
    except Exception:
        assert server.died() is None, server.died()
        raise
    assert server.died() is None, server.died()
    refused = [(p, o) for p, o in zip(prompts, outcomes) if o[0] == "error"]
    admitted = [(p, o) for p, o in zip(prompts, outcomes) if o[0] == "ok"]
    print(f"admitted {len(admitted)}, refused {len(refused)}, slowest refusal "
          f"{max(o[2] for _, o in refused):.2f} s, slowest completion {max(o[2] for _, o in admitted):.2f} s")
    assert all("overloaded" in o[1] for _, o in refused), {o[1] for _, o in refused}
    assert len(admitted) >= 256 and len(refused) >= 1000, (len(admitted), len(refused))
    assert max(o[2] for _, o in refused) < 30, "refusals must come quickly, not after a queue"
    offline = LLM(model=str(DEFAULT_MODEL), **ENGINE_ARGS)
    expected = offline.generate([p for p, _ in admitted], SamplingParams(**params))
    assert [o[1] for _, o in admitted] == [e.outputs[0].text for e in expected]
    assert wait_until(lambda: server.metric("pagedllm:kv_cache_usage_perc") == 0, timeout=5)
    assert server.ready()


def test_a_huge_grpc_prompt_is_refused_before_it_is_tokenized(server):
    t0 = time.monotonic()
    r = stream(server.grpc_url, "word " * 2_000_000, {"max_tokens": 4})  # 10 MB
    assert r.error is not None and "input 'text_input' holds 10000000 bytes" in r.error, r.error
    assert time.monotonic() - t0 < 2.0
    assert stream(server.grpc_url, "hello", {"max_tokens": 4}).error is None

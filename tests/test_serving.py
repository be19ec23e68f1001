"""Live-server tests: a real tritonserver 2.51 serving the ensemble with the default model.

Each test talks to the server over gRPC or HTTP the way a user's client would, and compares with
the offline engine (same model, same engine arguments) in this process.
"""
from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("tritonclient.grpc")

from polling import wait_until  # noqa: E402
from live_server import DEFAULT_MODEL, ENGINE_ARGS, start_server, stream, tensor  # noqa: E402
from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm_tools.processes import descendants  # noqa: E402

PROMPTS = [
    "def fib(n):",
    "Once upon a time, the little cat",
    "Le café était très animé, où les élèves",
    "東京タワーは日本の",
    "Party time 🎉🚀 with emoji",
    "    if x > 0:\n        return",
]


@pytest.fixture(scope="module")
def server(triton):
    return triton


def _offline_text(llm: LLM, prompt: str, params: dict) -> str:
    return llm.generate([prompt], SamplingParams(**params))[0].outputs[0].text


def _http(server, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http}{path}",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_grpc_stream_equals_offline_and_non_stream(server, offline):
    params = {"max_tokens": 40, "temperature": 0}
    for prompt in PROMPTS:
        expected = _offline_text(offline, prompt, params)
        streamed = stream(server.grpc_url, prompt, params)
        whole = stream(server.grpc_url, prompt, params, stream=False)
        assert streamed.error is None and whole.error is None
        assert streamed.text == expected, prompt
        assert whole.pieces == [expected], prompt
        assert len(streamed.pieces) > 1 and streamed.num_final == 1
        assert streamed.finish_reason == "length" and streamed.num_output_tokens == 40


def test_http_generate_stream_equals_offline(server, offline):
    params = {"max_tokens": 24, "temperature": 0}
    for prompt in PROMPTS:
        status, body = _http(server, "/v2/models/ensemble/generate_stream",
                             {"text_input": prompt, "stream": True, "exclude_input_in_output": True,
                              "sampling_parameters": json.dumps(params)})
        assert status == 200, body
        events = [json.loads(line[len("data: "):]) for line in body.splitlines()
                  if line.startswith("data: ")]
        assert "".join(e["text_output"] for e in events) == _offline_text(offline, prompt, params)
        assert events[-1]["finish_reason"] == "length"
        assert {e["finish_reason"] for e in events[:-1]} <= {"None"}  # vllm_backend's meaning
        status, body = _http(server, "/v2/models/ensemble/generate",
                             {"text_input": prompt, "max_tokens": 24,
                              "sampling_parameters": json.dumps({"temperature": 0})})
        assert status == 200, body
        # Without exclude_input_in_output the prompt leads the text (vllm_backend's default).
        assert json.loads(body)["text_output"] == prompt + _offline_text(offline, prompt, params)


def test_concurrent_requests_each_equal_offline(server, offline):
    params = {"max_tokens": 32, "temperature": 0, "ignore_eos": True}
    prompts = [f"{p} {i}" for i in range(3) for p in PROMPTS]
    expected = [o.outputs[0].text for o in offline.generate(prompts, SamplingParams(**params))]
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(lambda p: stream(server.grpc_url, p, params).text, prompts))
    assert got == expected


def test_sampling_parameters_honoured(server, offline):
    url = server.grpc_url
    r = stream(url, "Once upon a time", {"max_tokens": 5, "ignore_eos": True})
    assert r.num_output_tokens == 5 and r.finish_reason == "length"
    r = stream(url, "Once upon a time", max_tokens=7)   # the ensemble's max_tokens input
    assert r.num_output_tokens == 7
    stop = {"max_tokens": 60, "temperature": 0, "stop": [" the"]}
    r = stream(url, "Once upon a time", stop)
    assert r.finish_reason == "stop" and " the" not in r.text
    assert r.text == _offline_text(offline, "Once upon a time", stop)
    seeded = {"max_tokens": 30, "temperature": 1.0, "seed": 1234}
    a, b = (stream(url, "The cat", seeded).text for _ in range(2))
    c = stream(url, "The cat", {**seeded, "seed": 99}).text
    assert a == b and a != c
    greedy = stream(url, "The cat", {"max_tokens": 30, "temperature": 0}).text
    assert greedy == _offline_text(offline, "The cat", {"max_tokens": 30, "temperature": 0})


@pytest.mark.parametrize("kwargs, message", [
    ({"params_text": "{not json"}, "not valid JSON"),
    ({"params": {"bogus_field": 1}}, "bogus_field"),
    ({"params": {"max_tokens": -3}}, "max_tokens"),
    ({"text": ""}, "prompt is empty"),
    ({"text": "def f():\x00 return 1"}, "NUL character"),
    ({"text": "\x00"}, "NUL character"),
    ({"text": b"\xff\xfe def"}, "input 'text_input' is not UTF-8"),
    ({"text": "word " * 1500}, "max_model_len"),
])
def test_bad_input_is_named_and_server_keeps_serving(server, kwargs, message):
    text = kwargs.get("text", "hello")
    extra = {}
    if "params_text" in kwargs:
        extra["sampling_parameters"] = kwargs["params_text"]
    r = stream(server.grpc_url, text, kwargs.get("params"), **extra)
    assert r.error is not None and message in r.error, r.error
    assert server.ready()
    ok = stream(server.grpc_url, "hello", {"max_tokens": 4})
    assert ok.error is None and ok.num_output_tokens == 4
    assert _wait_usage_zero(server, time.monotonic()) < 1.0  # nothing leaked


def _wait_usage_zero(server, t0: float, limit: float = 1.0) -> float:
    while server.metric("pagedllm:kv_cache_usage_perc") > 0:
        if time.monotonic() - t0 > limit + 1.0:
            break
        time.sleep(0.02)
    return time.monotonic() - t0


def _wait_usage_positive(server) -> None:
    """The gauges refresh every 50 ms: wait for the running request to show."""
    deadline = time.monotonic() + 2.0
    while server.metric("pagedllm:kv_cache_usage_perc") == 0:
        assert time.monotonic() < deadline, "the running request never showed in the KV usage"
        time.sleep(0.02)


def _start_long(server, model: str, request_id: str):
    """Starts a long streaming request; returns (client, responses, its cancel_token) once
    tokens flow."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(server.grpc_url)
    responses: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    params = json.dumps({"max_tokens": 900, "ignore_eos": True})
    if model == "llm":
        from pagedllm.tokenizer import Tokenizer
        ids = Tokenizer.from_dir(DEFAULT_MODEL).encode("Once upon a time " * 10)
        inputs = [tensor("input_ids", ids, True), tensor("stream", True, True),
                  tensor("sampling_parameters", params, True)]
    else:
        inputs = [tensor("text_input", "Once upon a time " * 10), tensor("stream", True),
                  tensor("sampling_parameters", params)]
    client.async_stream_infer(model, inputs, request_id=request_id,
                              enable_empty_final_response=True)
    for _ in range(5):
        result, error = responses.get(timeout=60)
        assert error is None
    token = result.as_numpy("cancel_token").reshape(-1)[0].decode()
    _wait_usage_positive(server)
    return client, responses, token


def test_cancel_direct_llm_frees_blocks_within_1s(server):
    client, _, _ = _start_long(server, "llm", "cancel-direct")
    t0 = time.monotonic()
    client.stop_stream(cancel_requests=True)
    elapsed = _wait_usage_zero(server, t0)
    client.close()
    assert elapsed < 1.0, f"blocks freed after {elapsed:.2f} s"


def test_cancel_ensemble_by_token_frees_blocks_within_1s(server):
    """Triton 2.51 does not pass an ensemble cancellation on to the running llm step: the client
    cancels its stream and sends `cancel` with the token its responses carried
    (pagedllm_clients.generate does)."""
    from pagedllm_clients.cancel import cancel_request
    client, _, token = _start_long(server, "ensemble", "cancel-ensemble")
    t0 = time.monotonic()
    client.stop_stream(cancel_requests=True)
    cancel_request(server.grpc_url, token)
    elapsed = _wait_usage_zero(server, t0)
    client.close()
    assert elapsed < 1.0, f"blocks freed after {elapsed:.2f} s"


def test_metrics_exported(server):
    stream(server.grpc_url, "metrics please", {"max_tokens": 3})
    for name in ("pagedllm:num_requests_running", "pagedllm:num_requests_waiting",
                 "pagedllm:num_preemptions_total", "pagedllm:prompt_tokens_total",
                 "pagedllm:generation_tokens_total", "pagedllm:time_to_first_token_seconds_count",
                 "pagedllm:inter_token_latency_seconds_count",
                 "pagedllm:e2e_request_latency_seconds_count"):
        server.metric(name)
    assert server.metric("pagedllm:generation_tokens_total") >= 3
    assert server.metric("pagedllm:e2e_request_latency_seconds_count") >= 1


_DISCONNECTING_CLIENT = """
import json, sys, time
sys.path[:0] = sys.argv[2:]
import tritonclient.grpc as grpcclient
from live_server import tensor
client = grpcclient.InferenceServerClient(sys.argv[1])
client.start_stream(callback=lambda result, error: print("token", flush=True))
params = json.dumps({"max_tokens": 900, "ignore_eos": True})
client.async_stream_infer("llm", [tensor("input_ids", [1, 2, 3, 4, 5], True),
                                  tensor("stream", True, True),
                                  tensor("sampling_parameters", params, True)], request_id="gone")
time.sleep(600)
"""


def test_disconnect_direct_llm_frees_blocks_within_1s(server):
    """A client process that dies mid-stream (no cancel sent) frees its blocks."""
    import subprocess
    import sys
    from pathlib import Path
    tests = Path(__file__).resolve().parent
    child = subprocess.Popen([sys.executable, "-c", _DISCONNECTING_CLIENT, server.grpc_url,
                              str(tests)],
                             stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):
            assert child.stdout.readline() == "token\n"
        _wait_usage_positive(server)
    finally:
        child.kill()
        child.wait()
    elapsed = _wait_usage_zero(server, time.monotonic())
    assert elapsed < 1.0, f"blocks freed after {elapsed:.2f} s"


def test_perf_analyzer_short_run_against_ensemble(server):
    """The real perf_analyzer 2.51 (gRPC streaming, workload prompts) completes against ensemble."""
    from pagedllm_tools.bench import perf_analyzer
    result = perf_analyzer.quick_ensemble(server.grpc_url)
    level = result["levels"][0]
    assert level["num_errors"] == 0
    assert level["output_tok_s"] > 0 and level["num_requests"] > 0


def test_load_generator_rounds_against_the_server(server, tmp_path):
    """The load generator end to end: server runs and offline runs alternate, one ratio a round."""
    from pagedllm_clients import load
    out = tmp_path / "load.json"
    rc = load.main(["--url", server.grpc_url, "--concurrency", "4", "--num-requests", "8",
                    "--scale", str(1 / 32), "--offline", str(DEFAULT_MODEL), "--engine-args",
                    str(_engine_args_file(tmp_path)), "--repeats", "2", "--no-progress",
                    "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    target = result["workload"]["target_output_tokens"]
    assert len(result["rounds"]) == 2
    for round_ in result["rounds"]:
        [run] = round_["runs"]
        assert run["num_errors"] == 0 and run["output_tokens"] == target  # ignore_eos
        assert round_["offline"]["output_tokens"] == target
        assert run["ratio_to_offline"] == pytest.approx(
            run["output_tok_s"] / round_["offline"]["output_tok_s"])
    seeds = [r["runs"][0]["prompt_seed"] for r in result["rounds"]]
    assert len(set(seeds)) == 2  # each round has prompts the server has not cached
    assert [r["offline"]["prompt_seed"] for r in result["rounds"]] == seeds  # the same prompts
    ratios = result["ratio_to_offline"]["4"]
    assert ratios["rounds"] == [r["runs"][0]["ratio_to_offline"] for r in result["rounds"]]
    assert min(ratios["rounds"]) <= ratios["median"] <= max(ratios["rounds"])


def _engine_args_file(tmp_path):
    path = tmp_path / "engine_args.json"
    path.write_text(json.dumps(ENGINE_ARGS))
    return path


def test_engine_on_a_stub_thread_serves_the_same(tmp_path, offline):
    """The llm config's parameter engine_process "false" keeps the engine on a stub thread."""
    own = start_server(tmp_path, llm_parameters={"engine_process": "false"})
    try:
        family = descendants(own.process.pid)
        assert not [cmd for cmd in family.values() if "spawn_main" in cmd], family
        params = {"max_tokens": 24, "temperature": 0}
        for prompt in PROMPTS[:2]:
            result = stream(own.grpc_url, prompt, params)
            assert result.error is None and result.num_final == 1
            assert result.text == _offline_text(offline, prompt, params)
    finally:
        own.stop()


def test_a_killed_server_leaves_no_stub_or_engine_process(tmp_path):
    """SIGKILL the server mid-stream: every stub and the engine process exit within seconds."""
    import os
    import signal
    import threading
    from pathlib import Path

    own = start_server(tmp_path)
    try:
        streaming = threading.Thread(target=stream, args=(own.grpc_url, "def fib(n):"),
                                     kwargs={"params": {"max_tokens": 1000, "ignore_eos": True}},
                                     daemon=True)
        streaming.start()
        _wait_usage_positive(own)
        family = descendants(own.process.pid)
        stubs = [pid for pid, cmd in family.items() if "triton_python_backend_stub" in cmd]
        engine = [pid for pid, cmd in family.items() if "spawn_main" in cmd]
        assert len(stubs) == 3 and len(engine) == 1, family
        os.kill(own.process.pid, signal.SIGKILL)
        own.process.wait()

        def alive() -> list[int]:
            return [p for p in family if Path(f"/proc/{p}").exists() and _state(p) != "Z"]

        assert wait_until(lambda: not alive(), timeout=10), \
            f"still running 10 s after the server died: {[family[p] for p in alive()]}"
    finally:
        own.stop()


def _state(pid: int) -> str:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2]


# ---- vllm_backend's contract, and requests owned by their client -----------------------------

async def _vllm_sample_client(url: str, prompts: list[str], stream: bool, exclude: bool) -> dict:
    """What Triton's vllm_backend sample client (samples/client.py) does, written anew here:
    asyncio gRPC stream_infer, every input of shape [1], numbers as strings in
    sampling_parameters (also sent as request parameters), text_output concatenated per
    request id."""
    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    sampling = {"temperature": "0", "top_p": "0.95", "max_tokens": "20"}

    def request(i: int, prompt: str) -> dict:
        values = [("text_input", np.array([prompt.encode()], dtype=np.object_), "BYTES"),
                  ("stream", np.array([stream], dtype=bool), "BOOL"),
                  ("sampling_parameters", np.array([json.dumps(sampling).encode()],
                                                   dtype=np.object_), "BYTES"),
                  ("exclude_input_in_output", np.array([exclude], dtype=bool), "BOOL")]
        inputs = []
        for name, value, dtype in values:
            tensor = grpcclient.InferInput(name, [1], dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return {"model_name": "ensemble", "inputs": inputs, "request_id": str(i),
                "outputs": [grpcclient.InferRequestedOutput("text_output")],
                "parameters": sampling}

    async def requests():
        for i, prompt in enumerate(prompts):
            yield request(i, prompt)

    client = grpcclient.InferenceServerClient(url=url)
    results: dict[str, list[str]] = {}
    try:
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            for piece in result.as_numpy("text_output"):
                results.setdefault(result.get_response().id, []).append(piece.decode())
    finally:
        await client.close()
    return {rid: "".join(pieces) for rid, pieces in results.items()}


@pytest.mark.parametrize("stream, exclude", [(False, False), (True, True)])
def test_vllm_backend_sample_client_works_unchanged(server, offline, stream, exclude):
    import asyncio
    prompts = PROMPTS[:3]
    got = asyncio.run(asyncio.wait_for(
        _vllm_sample_client(server.grpc_url, prompts, stream, exclude), timeout=120))
    params = {"temperature": 0, "max_tokens": 20}
    for i, prompt in enumerate(prompts):
        lead = "" if exclude else prompt  # vllm_backend: the prompt leads a non-excluded text
        assert got[str(i)] == lead + _offline_text(offline, prompt, params), prompt


def test_n_completions_and_logprobs_through_the_ensemble(server, offline):
    params = {"n": 2, "temperature": 0, "max_tokens": 12, "ignore_eos": True, "logprobs": 2}
    r = stream(server.grpc_url, "def fib(n):", params)
    assert r.error is None and len(r.texts) == 2
    expected = _offline_text(offline, "def fib(n):", {"temperature": 0, "max_tokens": 12,
                                                       "ignore_eos": True})
    assert r.texts == [expected, expected]  # greedy: both completions alike
    assert len(r.logprobs) == 12  # completion 0: one entry per token, the sampled one ranked
    assert all(len(entry) >= 2 and min(v["rank"] for v in entry.values()) == 1
               for entry in r.logprobs)
    sampled_lps = [max(entry.values(), key=lambda v: v["logprob"])["logprob"] for entry in r.logprobs]
    assert r.cumulative_logprob == pytest.approx(sum(sampled_lps), rel=1e-4)  # greedy: the top one


def test_min_length_and_a_max_tokens_that_cannot_fit(server):
    r = stream(server.grpc_url, "hello", {"max_tokens": 8}, min_length=8)
    assert r.error is None and r.num_output_tokens == 8
    r = stream(server.grpc_url, "hello", {"max_tokens": 5000})
    assert r.error is not None and "max_tokens is 5000" in r.error
    r = stream(server.grpc_url, "hello", max_tokens=2**31 - 1)
    assert r.error is not None and "max_tokens" in r.error


def test_no_client_can_cancel_another_clients_request(server):
    from pagedllm_clients.cancel import cancel_request
    client, responses, token = _start_long(server, "ensemble", "owner")
    try:
        for bad in ("", "not-a-token", token[:-1] + ("A" if token[-1] != "A" else "B")):
            with pytest.raises((RuntimeError, ValueError), match="cancel"):
                cancel_request(server.grpc_url, bad)
        time.sleep(0.3)
        assert server.metric("pagedllm:kv_cache_usage_perc") > 0, "the owner's request still runs"
        cancel_request(server.grpc_url, token)  # its owner can
        assert _wait_usage_zero(server, time.monotonic()) < 1.0
    finally:
        client.stop_stream()
        client.close()

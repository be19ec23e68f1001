"""The OpenAI-compatible service (pagedllm_openai) against a real tritonserver 2.51.

One tritonserver and one service (a subprocess, as `pagedllm-openai` runs) for the module; a few
tests start a service of their own for other settings (a lower per-client limit, a short
timeout, a template that raises, a shutdown). Clients are the official `openai` SDK and httpx;
the oracles are the offline engine (same model, same engine arguments) and transformers.
"""
from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from live_server import DEFAULT_MODEL  # noqa: E402
from live_service import Service, start_service  # noqa: E402
from pagedllm import LLM, SamplingParams  # noqa: E402
from pagedllm.tokenizer import Tokenizer  # noqa: E402
from pagedllm_triton.serving.tritonserver import free_port  # noqa: E402

MULTI_BYTE = "Le café était très animé 🎉 東京タワーは"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL))


def _offline(llm: LLM, prompt, **params):
    prompt = prompt if isinstance(prompt, str) else {"prompt_token_ids": prompt}
    return llm.generate([prompt], SamplingParams(**params))[0].outputs[0]


def _sse(body: str) -> list:
    """The data of every SSE event; [DONE] as the string."""
    events = []
    for block in body.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _post(service: Service, path: str, body, **kwargs) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(service.url + path, content=body, timeout=120, **kwargs)
    return httpx.post(service.url + path, json=body, timeout=120, **kwargs)


def _wait_kv(triton, positive: bool, limit: float) -> float:
    """Seconds until the KV usage is positive (or zero); the gauge refreshes every 50 ms."""
    t0 = time.monotonic()
    while (triton.metric("pagedllm:kv_cache_usage_perc") > 0) != positive:
        if time.monotonic() - t0 > limit:
            break
        time.sleep(0.02)
    return time.monotonic() - t0


# ---- the API, as the official SDK sees it -----------------------------------------------------

def test_models_health_and_metrics(service):
    client = service.client()
    assert [m.id for m in client.models.list().data] == ["default"]
    live = httpx.get(f"{service.url}/v1/health/live")
    assert live.status_code == 200 and live.json() == {"object": "health.response",
                                                      "message": "live"}
    ready = httpx.get(f"{service.url}/v1/health/ready")
    assert ready.status_code == 200 and ready.json()["message"] == "ready"
    metrics = httpx.get(f"{service.url}/v1/metrics").text
    assert "pagedllm:kv_cache_usage_perc" in metrics               # Triton's
    assert "pagedllm_openai:requests_total" in metrics              # ours


def test_completions_greedy_equal_offline_streamed_or_not(service, offline, tokenizer):
    client = service.client()
    for prompt in ("def fib(n):", MULTI_BYTE):
        expected = _offline(offline, prompt, temperature=0, max_tokens=24)
        whole = client.completions.create(model="default", prompt=prompt, max_tokens=24,
                                          temperature=0)
        assert whole.choices[0].text == expected.text
        assert whole.choices[0].finish_reason == expected.finish_reason
        assert whole.usage.prompt_tokens == len(tokenizer.encode(prompt))
        assert whole.usage.completion_tokens == len(expected.token_ids)
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + len(expected.token_ids)
        chunks = list(client.completions.create(model="default", prompt=prompt, max_tokens=24,
                                                temperature=0, stream=True))
        assert len(chunks) > 1
        streamed = "".join(c.choices[0].text for c in chunks)
        assert streamed.encode() == whole.choices[0].text.encode()  # byte for byte
        assert chunks[-1].choices[0].finish_reason == expected.finish_reason


def test_chat_greedy_equals_offline_on_the_rendered_prompt(service, offline, tokenizer,
                                                           hf_tokenizer):
    client = service.client()
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": MULTI_BYTE}]
    rendered = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    expected = _offline(offline, rendered, temperature=0, max_tokens=20)
    whole = client.chat.completions.create(model="default", messages=messages, max_tokens=20,
                                           temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected.text
    assert whole.usage.prompt_tokens == len(tokenizer.encode(rendered))
    assert whole.usage.completion_tokens == len(expected.token_ids)
    # max_completion_tokens is the newer name of max_tokens.
    newer = client.chat.completions.create(model="default", messages=messages, temperature=0,
                                           max_completion_tokens=20)
    assert newer.choices[0].message.content == expected.text
    chunks = list(client.chat.completions.create(model="default", messages=messages,
                                                 max_tokens=20, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.encode() == expected.text.encode()
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason


def test_usage_chunk_only_when_asked(service):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
            "temperature": 0}
    plain = _sse(_post(service, "/v1/chat/completions", body).text)
    assert plain[-1] == "[DONE]" and all(e["choices"] for e in plain[:-1])
    assert not any("usage" in e for e in plain[:-1])  # genai-perf reads choices[0] of each
    asked = _sse(_post(service, "/v1/chat/completions",
                       {**body, "stream_options": {"include_usage": True}}).text)
    usage = asked[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 5
    completion = _sse(_post(service, "/v1/completions",
                            {"prompt": "def", "max_tokens": 4, "stream": True,
                             "stream_options": {"include_usage": True}}).text)
    assert completion[-2]["choices"] == [] and completion[-2]["usage"]["completion_tokens"] == 4


def test_n_logprobs_stop_and_seed(service, offline):
    client = service.client()
    r = client.completions.create(model="default", prompt="def fib(n):", max_tokens=10,
                                  temperature=0, n=2, logprobs=2,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == r.choices[1].text  # greedy: alike
    assert r.usage.completion_tokens == 20
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 10 and "".join(lp.tokens) == r.choices[0].text
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(10)]
    # Greedy: the sampled token is the most likely one.
    assert all(lp.token_logprobs[i] == max(top.values()) for i, top in enumerate(lp.top_logprobs))
    chat = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "x"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 for t in content)

    stop = client.completions.create(model="default", prompt="Once upon a time", max_tokens=60,
                                     temperature=0, stop=[" the"])
    expected = _offline(offline, "Once upon a time", temperature=0, max_tokens=60, stop=[" the"])
    assert stop.choices[0].finish_reason == "stop" and " the" not in stop.choices[0].text
    assert stop.choices[0].text == expected.text

    def seeded(seed):
        return client.completions.create(model="default", prompt="The cat", max_tokens=24,
                                         temperature=1.0, seed=seed).choices[0].text
    assert seeded(1234) == seeded(1234) != seeded(99)


def test_token_id_prompts_go_to_the_llm_model(service, offline, tokenizer):
    ids = tokenizer.encode(MULTI_BYTE)
    expected = _offline(offline, ids, temperature=0, max_tokens=16)
    r = _post(service, "/v1/completions", {"prompt": ids, "max_tokens": 16, "temperature": 0,
                                           "echo": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == tokenizer.decode(ids) + expected.text
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    events = _sse(_post(service, "/v1/completions", {"prompt": ids, "max_tokens": 16,
                                                     "temperature": 0, "stream": True}).text)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected.text


# ---- disconnects ------------------------------------------------------------------------------

LONG = {"max_tokens": 900, "ignore_eos": True}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_disconnect_mid_stream_frees_kv_within_1s(service, triton, tokenizer, path):
    """Chat goes through the ensemble (cancelled by cancel_token: Triton 2.51 does not pass the
    stream's cancellation on); a token-id prompt goes to the llm model itself."""
    if "chat" in path:
        body = {"messages": [{"role": "user", "content": "Once upon a time " * 10}]}
    else:
        body = {"prompt": tokenizer.encode("Once upon a time " * 10)}
    body.update(stream=True, **LONG)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", service.url + path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(5):
                while not next(lines).startswith("data: "):
                    pass
            assert _wait_kv(triton, positive=True, limit=3) < 3, "the request never showed"
    # the connection is closed here: the client is gone
    elapsed = _wait_kv(triton, positive=False, limit=2)
    assert elapsed < 1.0, f"KV blocks freed after {elapsed:.2f} s"


def test_disconnect_while_waiting_for_a_whole_answer_frees_kv(service, triton):
    body = {"prompt": "Once upon a time " * 10, **LONG}

    def give_up():
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{service.url}/v1/completions", json=body, timeout=1.5)
    waiter = threading.Thread(target=give_up)
    waiter.start()
    assert _wait_kv(triton, positive=True, limit=3) < 3
    waiter.join()
    elapsed = _wait_kv(triton, positive=False, limit=2)
    assert elapsed < 1.0, f"KV blocks freed after {elapsed:.2f} s"


# ---- bad requests -----------------------------------------------------------------------------

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/chat/completions", {**CHAT, "model": "gpt-9"}, 404, "model"),
    ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages.[0].role"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "n": 65}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x" * 100_001}, 400, "prompt"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x" * 100_001}]},
     400, "messages"),
    # Triton's own refusals, passed through with the field named:
    ("/v1/completions", {"prompt": "hello", "max_tokens": 5000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, 400, "prompt"),
    ("/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 5000}, 400, "max_tokens"),
    ("/v1/completions", "{not json", 400, None),
    ("/v1/completions", b"x" * ((1 << 20) + 1), 413, None),
])
def test_bad_requests_are_openai_shaped_and_named(service, path, body, status, param):
    r = _post(service, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert "Traceback" not in r.text
    assert httpx.get(f"{service.url}/v1/health/ready").status_code == 200


def test_the_sdk_raises_on_errors_and_the_service_stays_ready(service):
    client = service.client()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=CHAT["messages"])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="default", messages=CHAT["messages"], n=0)
    assert e.value.body["param"] == "n"
    assert httpx.get(f"{service.url}/v1/health/ready").status_code == 200


def test_a_template_that_raises_is_a_400_naming_messages(triton, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% if messages[0]['role'] != 'system' %}"
                               "{{ raise_exception('the first message must be a system one') }}"
                               "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    own = start_service(triton, tmp_path, model_dir=model)
    try:
        r = _post(own, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "messages"
        assert "the first message must be a system one" in r.json()["error"]["message"]
        ok = _post(own, "/v1/chat/completions",
                   {"messages": [{"role": "system", "content": "def"}], "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        assert httpx.get(f"{own.url}/v1/health/ready").status_code == 200
    finally:
        own.stop()


# ---- the /v2 guard ----------------------------------------------------------------------------

def test_a_4mb_form_post_gets_413_and_triton_lives(service, triton):
    """The crash reproduction, through the guard only: this body, sent to tritonserver 2.51's
    HTTP port itself, kills the server (SIGSEGV)."""
    body = b"text_input=" + b"x" * (4 << 20)
    r = _post(service, "/v2/models/ensemble/generate", body,
              headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    assert "limit" in r.json()["error"]
    chunked = httpx.post(f"{service.url}/v2/models/ensemble/infer",
                         content=iter([b"x" * (256 << 10)] * 16), timeout=60,
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413  # no Content-Length: counted while streaming
    time.sleep(0.5)
    assert triton.process.poll() is None and triton.ready()
    assert httpx.get(f"{service.url}/v2/health/ready").status_code == 200


def test_generate_stream_through_the_guard_equals_direct(service, triton):
    body = {"text_input": MULTI_BYTE, "stream": True, "exclude_input_in_output": True,
            "max_tokens": 16, "sampling_parameters": json.dumps({"temperature": 0})}

    def stream(base: str) -> tuple[str, list[str]]:
        r = httpx.post(f"{base}/v2/models/ensemble/generate_stream", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.text)
        # NOTE: how tokens group into events depends on timing; the text and the ends do not.
        return "".join(e["text_output"] for e in events), [e["finish_reason"] for e in events]

    direct_text, direct_reasons = stream(f"http://127.0.0.1:{triton.http}")
    text, reasons = stream(service.url)
    assert text.encode() == direct_text.encode()
    assert reasons[-1] == direct_reasons[-1] == "length" and set(reasons[:-1]) <= {"None"}
    whole = httpx.post(f"{service.url}/v2/models/ensemble/generate",
                       json={**body, "stream": False}, timeout=120).json()
    assert whole["text_output"] == direct_text


def test_generate_without_text_input_is_named(service):
    for path in ("/v2/models/ensemble/generate", "/v2/models/ensemble/generate_stream"):
        r = _post(service, path, {"max_tokens": 4})
        assert r.status_code == 400 and "text_input" in r.json()["error"]


# ---- services of their own: limits, timeout, shutdown -------------------------------------------

def _open_stream(client: httpx.Client, url: str, key: str):
    """A long streamed chat from client `key`: (the open response, its lines) once a chunk came.

    NOTE: keep the lines iterator: dropping it closes the response (a disconnect).
    """
    r = client.send(client.build_request(
        "POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
        json={"messages": [{"role": "user", "content": "Once"}], "stream": True, **LONG}),
        stream=True)
    lines = r.iter_lines()
    if r.status_code == 200:
        next(lines)
    return r, lines


def test_per_client_concurrency_limit(triton, tmp_path):
    """Clients are told apart by their verified API keys (with none configured, by address)."""
    own = start_service(triton, tmp_path, "--max-concurrent-per-client", "2",
                        "--api-key", "alice", "--api-key", "bob")
    opened = []
    try:
        with httpx.Client(timeout=60) as client:
            opened = [_open_stream(client, own.url, "alice") for _ in range(2)]
            assert [r.status_code for r, _ in opened] == [200, 200]
            third, _ = _open_stream(client, own.url, "alice")
            opened.append((third, None))
            assert third.status_code == 429
            third.read()
            assert third.json()["error"]["code"] == "too_many_concurrent_requests"
            other = _post(own, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                          headers={"Authorization": "Bearer bob"})
            assert other.status_code == 200, other.text
            # Inference through the /v2 guard counts too.
            v2 = _post(own, "/v2/models/ensemble/generate", {"text_input": "hi", "max_tokens": 2},
                       headers={"Authorization": "Bearer alice"})
            assert v2.status_code == 429
            for r, _ in opened:
                r.close()
        assert _wait_kv(triton, positive=False, limit=2) < 1.0
        # Alice's slots came back with her streams.
        again = _post(own, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                      headers={"Authorization": "Bearer alice"})
        assert again.status_code == 200, again.text
    finally:
        for r, _ in opened:
            r.close()
        own.stop()


def test_without_triton_every_answer_is_a_clear_503(tmp_path):
    from types import SimpleNamespace
    nowhere = SimpleNamespace(grpc_url=f"127.0.0.1:{free_port()}", http=free_port(),
                              metrics=free_port())
    own = start_service(nowhere, tmp_path)
    try:
        assert httpx.get(f"{own.url}/v1/health/live").status_code == 200
        ready = httpx.get(f"{own.url}/v1/health/ready")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        for body in ({"prompt": "hi"}, {"prompt": "hi", "stream": True}):
            r = _post(own, "/v1/completions", body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        r = httpx.get(f"{own.url}/v2/health/ready")
        assert r.status_code == 503 and "not reachable" in r.json()["error"]
        metrics = httpx.get(f"{own.url}/v1/metrics")
        assert metrics.status_code == 200 and "pagedllm_openai:requests_total" in metrics.text
        assert "Traceback" not in own.log.read_text()
    finally:
        own.stop()


def test_request_timeout_cancels_the_generation(triton, tmp_path):
    own = start_service(triton, tmp_path, "--request-timeout-s", "1")
    try:
        r = _post(own, "/v1/completions", {"prompt": "Once upon a time", **LONG})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert _wait_kv(triton, positive=False, limit=2) < 1.0
        events = _sse(_post(own, "/v1/completions", {"prompt": "Once", "stream": True,
                                                     **LONG}).text)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
        assert _wait_kv(triton, positive=False, limit=2) < 1.0
    finally:
        own.stop()


def _service_metric(service: Service, name: str) -> float:
    for line in httpx.get(f"{service.url}/v1/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_a_request_timed_out_before_its_first_token_is_still_cancelled(triton, tmp_path):
    """No response yet means no cancel_token yet: the service reads on until the first response
    brings it, then cancels."""
    own = start_service(triton, tmp_path, "--request-timeout-s", "0.001")
    try:
        r = _post(own, "/v1/completions", {"prompt": "Once upon a time " * 10, **LONG})
        assert r.status_code == 504
        t0 = time.monotonic()
        while _service_metric(own, "pagedllm_openai:engine_cancels_total") < 1:
            assert time.monotonic() - t0 < 5, "no cancel was sent"
            time.sleep(0.02)
        # The cancel went out once the request ran in the engine; it stops well before its
        # 900 tokens (about 3 s here).
        assert _wait_kv(triton, positive=False, limit=2) < 1.0
    finally:
        own.stop()


def test_shutdown_cancels_live_generations(triton, tmp_path):
    own = start_service(triton, tmp_path)
    try:
        with httpx.Client(timeout=60) as client:
            r, lines = _open_stream(client, own.url, "carol")
            assert r.status_code == 200
            assert _wait_kv(triton, positive=True, limit=3) < 3
            own.process.send_signal(signal.SIGTERM)
            rest = "".join(line + "\n" for line in lines)
            r.close()
        assert '"code": "unavailable"' in rest and rest.rstrip().endswith("data: [DONE]")
        assert _wait_kv(triton, positive=False, limit=2) < 1.0
        own.process.wait(timeout=20)
        assert "Traceback" not in own.log.read_text()
    finally:
        own.stop()


def test_the_load_generator_drives_the_openai_api(service, tmp_path):
    """clients/pagedllm_clients/load.py --api openai: the workload through /v1/completions, every token counted."""
    from pagedllm_clients import load
    out = tmp_path / "load.json"
    rc = load.main(["--api", "openai", "--url", service.url, "--model", "default",
                    "--concurrency", "4", "--num-requests", "8", "--scale", str(1 / 32),
                    "--no-progress", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    [run] = result["runs"]
    assert run["num_errors"] == 0
    assert run["output_tokens"] == result["workload"]["target_output_tokens"]
    assert run["ttft_ms"]["p50"] > 0 and run["itl_ms"]["p50"] > 0


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError):
            pass
    return kids


def test_workers_share_the_port_and_stop_together(triton, tmp_path, offline, tokenizer):
    """--workers 2: two service processes on the one socket answer (the same greedy text as the
    offline engine, every stream whole), and SIGTERM stops both, cleanly."""
    own = start_service(triton, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 30
        while len(_children(own.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(own.process.pid)
        assert len(workers) == 2
        want = _offline(offline, "def fib(n):", max_tokens=12, temperature=0).text

        def ask(i: int) -> str:
            body = {"model": "default", "prompt": "def fib(n):", "max_tokens": 12,
                    "temperature": 0, "stream": i % 2 == 0}
            with httpx.Client(timeout=60) as client:  # a connection each: both workers get some
                r = client.post(f"{own.url}/v1/completions", json=body,
                                headers={"Authorization": f"Bearer w{i}"})
                assert r.status_code == 200, r.text
                if body["stream"]:
                    return "".join(c["choices"][0]["text"] for c in _sse(r.text)
                                   if isinstance(c, dict) and c["choices"])
                return r.json()["choices"][0]["text"]

        with ThreadPoolExecutor(8) as pool:
            texts = list(pool.map(ask, range(16)))
        assert texts == [want] * 16
        own.process.send_signal(signal.SIGTERM)
        assert own.process.wait(timeout=30) == 0
        assert not [p for p in workers if Path(f"/proc/{p}").exists()
                    and "zombie" not in Path(f"/proc/{p}/status").read_text()]
        assert "Traceback" not in own.log.read_text()
    finally:
        own.stop()

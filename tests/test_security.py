"""Security, as a hostile client sees it: against `make serve` itself (the real launcher, with its
tritonserver, watchdog and front door), once without API keys and once with one.

Each test is a promise of docs/reliability.md (Security): the control plane is refused on every
port, invented identities do not lift the per-client limit, keys are required when set, every
parser answers a 4xx naming the field within a second, and a legal request's cost is bounded.
After the hostile requests the server is still ready and no KV block is left in use.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")
httpx = pytest.importorskip("httpx")

from live_server import ENGINE_ARGS, stream  # noqa: E402
from polling import wait_until  # noqa: E402
from pagedllm_tools.processes import descendants  # noqa: E402
from pagedllm_triton.serving.tritonserver import free_port  # noqa: E402

KEY = "sk-test-4f1c2b"
# Room for 64 streams of 500 tokens at once (the per-client limit's worth).
SERVE_ENGINE_ARGS = {**ENGINE_ARGS, "num_kv_blocks": 4096}
LONG = {"max_tokens": 500, "ignore_eos": True}


@dataclass
class Served:
    """One `make serve` (python -m pagedllm_triton.serving.serve) on free ports."""

    process: subprocess.Popen
    ports: dict[str, int]
    log: Path
    repo: Path

    def _at(self, flag: str) -> str:
        return f"127.0.0.1:{self.ports[flag]}"

    openai = property(lambda self: "http://" + self._at("--openai-port"))
    v2 = property(lambda self: "http://" + self._at("--http-port"))
    grpc_url = property(lambda self: self._at("--grpc-port"))
    internal_http = property(lambda self: "http://" + self._at("--triton-http-port"))  # no proxy

    def tritonserver_argv(self) -> list[str]:
        [pid] = [p for p, cmd in descendants(self.process.pid).items()
                 if os.path.basename(cmd.split(" ")[0]) == "tritonserver"]
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")

    def kv_usage(self) -> float:
        url = f"http://127.0.0.1:{self.ports['--metrics-port']}/metrics"
        for line in httpx.get(url, timeout=5).text.splitlines():
            if line.startswith("pagedllm:kv_cache_usage_perc"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError("pagedllm:kv_cache_usage_perc")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.openai}/v1/health/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def make_serve(workdir: Path, env: dict[str, str] | None = None) -> Served:
    repo = workdir / "run" / "model_repository"
    ports = {flag: free_port() for flag in ("--http-port", "--grpc-port", "--metrics-port",
                                            "--openai-port", "--triton-http-port")}
    log = workdir / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "pagedllm_triton.serving.serve",
         "--run-dir", str(workdir / "run"),
         "--engine-args", json.dumps(SERVE_ENGINE_ARGS),
         *[str(x) for kv in ports.items() for x in kv]],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})})
    served = Served(process, ports, log, repo)
    if not wait_until(lambda: "ready:" in log.read_text() or process.poll() is not None,
                      timeout=240) or process.poll() is not None:
        served.stop()
        raise RuntimeError(f"make serve did not become ready:\n{log.read_text()[-3000:]}")
    assert wait_until(served.ready, timeout=60), log.read_text()[-3000:]
    return served


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = make_serve(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    s = make_serve(tmp_path_factory.mktemp("serve-keyed"), {"PAGEDLLM_API_KEY": KEY})
    yield s
    s.stop()


def _still_serving(s: Served, headers: dict | None = None) -> None:
    """Ready, a completion answers, and every KV block is free again."""
    assert s.ready()
    r = httpx.post(f"{s.openai}/v1/completions", json={"prompt": "def", "max_tokens": 2},
                   headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert wait_until(lambda: s.kv_usage() == 0, timeout=10), "KV blocks left in use"


# ---- the control plane ------------------------------------------------------------------------

CONTROL_PLANE = [
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v2/repository/models/llm/unload", {}),
    ("POST", "/v2/repository/models/llm/load",
     {"parameters": {"config": "{}", "file:1/model.py": "aW1wb3J0IG9z"}}),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("POST", "/v2/systemsharedmemory/region/r/register",
     {"key": "/x", "offset": 0, "byte_size": 8}),
    ("POST", "/v2/cudasharedmemory/region/r/unregister", {}),
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", {"log_verbose_level": 1}),
    ("GET", "/v2/trace/setting", None),
    ("POST", "/v2/models/llm/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
]


@pytest.mark.parametrize("method, path, body", CONTROL_PLANE)
def test_the_control_plane_is_refused_on_v2(served, method, path, body):
    r = httpx.request(method, served.v2 + path, json=body, timeout=10)
    assert r.status_code == 403, r.text
    assert "control plane" in r.json()["error"]
    # and on tritonserver's own (internal) HTTP port, without the secret: Triton's own 403
    if not path.startswith("/v2/cudasharedmemory"):
        direct = httpx.request(method, served.internal_http + path, json=body, timeout=10)
        assert direct.status_code == 403 and "restricted" in direct.json()["error"], direct.text


def test_five_unloads_in_a_row_leave_the_service_up(served):
    for _ in range(5):
        r = httpx.post(f"{served.v2}/v2/repository/models/llm/unload", timeout=10)
        assert r.status_code == 403
    assert httpx.get(f"{served.v2}/v2/models/llm/ready", timeout=5).status_code == 200
    _still_serving(served)


def test_the_control_plane_is_refused_on_grpc(served):
    """tritonserver 2.51 answers a restricted gRPC call UNAVAILABLE "This protocol is restricted"
    (its code; not PERMISSION_DENIED)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(served.grpc_url)
    calls = {
        "repository index": lambda: client.get_model_repository_index(),
        "unload": lambda: client.unload_model("llm"),
        "load with a file": lambda: client.load_model("llm", config="{}",
                                                      files={"file:1/model.py": b"import os"}),
        "shared memory status": lambda: client.get_system_shared_memory_status(),
        "shared memory register": lambda: client.register_system_shared_memory("r", "/x", 8),
        "log settings": lambda: client.update_log_settings({"log_verbose_level": 1}),
        "trace settings": lambda: client.get_trace_settings(),
    }
    for name, call in calls.items():
        with pytest.raises(InferenceServerException, match="restricted") as e:
            call()
        assert e.value.status() == "StatusCode.UNAVAILABLE", (name, e.value)
    # What clients need stays open: health, metadata, config, statistics, inference.
    assert client.is_model_ready("llm") and client.is_server_ready()
    assert client.get_model_config("ensemble").config.name == "ensemble"
    assert client.get_inference_statistics("ensemble").model_stats
    client.close()
    r = stream(served.grpc_url, "def fib(n):", {"max_tokens": 4})
    assert r.error is None and r.num_output_tokens == 4


def test_the_secret_is_only_on_tritonservers_command_line(served):
    """The header value opens the control plane; it is in tritonserver's argv (2.51 reads its
    switches nowhere else) and in no log or file of make serve's."""
    [flag] = [a for a in served.tritonserver_argv() if a.startswith("--http-restricted-api=")]
    secret = flag.rsplit("=", 1)[1]
    assert len(secret) >= 40
    assert secret not in served.log.read_text()
    for path in served.repo.rglob("*"):
        if path.is_file() and path.stat().st_size < 1 << 20:
            assert secret.encode() not in path.read_bytes(), path
    # and it works: the watchdog's header opens what a client's cannot
    r = httpx.post(f"{served.internal_http}/v2/repository/index", json={},
                   headers={"pagedllm-admin-key": secret}, timeout=10)
    assert r.status_code == 200 and {m["name"] for m in r.json()} >= {"llm", "ensemble"}


# ---- identities and the per-client limit ------------------------------------------------------

async def _burst(url: str, n: int, headers_of) -> list[int]:
    """n long streamed completions at once from this one peer; their statuses, once each has
    answered (the admitted ones are still streaming then); then every stream is closed."""
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(i: int) -> httpx.Response:
            request = client.build_request(
                "POST", f"{url}/v1/completions", headers=headers_of(i),
                json={"prompt": "Once upon a time", "stream": True, **LONG})
            return await client.send(request, stream=True)

        responses = await asyncio.gather(*(one(i) for i in range(n)))
        statuses = [r.status_code for r in responses]
        for r in responses:
            await r.aclose()
    return statuses


def test_invented_bearer_tokens_do_not_lift_the_per_client_limit(served):
    statuses = asyncio.run(_burst(served.openai, 200,
                                  lambda i: {"Authorization": f"Bearer made-up-{i}"}))
    assert statuses.count(200) == 64 and statuses.count(429) == 136, sorted(set(statuses))
    _still_serving(served)


# ---- API keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"api-key": "wrong"}, {"Authorization": f"Basic {KEY}"}])
def test_without_a_valid_key_every_route_answers_401(keyed, headers):
    for method, url, body in [
            ("POST", f"{keyed.openai}/v1/completions", {"prompt": "x", "max_tokens": 1}),
            ("POST", f"{keyed.openai}/v1/chat/completions",
             {"messages": [{"role": "user", "content": "x"}]}),
            ("GET", f"{keyed.openai}/v1/models", None),
            ("GET", f"{keyed.v2}/v2/models/ensemble", None),
            ("POST", f"{keyed.v2}/v2/models/ensemble/generate", {"text_input": "x"}),
            ("POST", f"{keyed.v2}/v2/repository/models/llm/unload", {})]:
        r = httpx.request(method, url, json=body, headers=headers, timeout=10)
        assert r.status_code == 401, (url, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        if "/v1/" in url:
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        else:
            assert "API key" in error
    # health stays open for probes
    assert httpx.get(f"{keyed.openai}/v1/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{keyed.v2}/v2/health/ready", timeout=10).status_code == 200


def test_the_right_key_works_as_bearer_or_api_key_header(keyed):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{keyed.openai}/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(model="default", prompt="def", max_tokens=3).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.openai}/v1", api_key="nope",
                      max_retries=0).models.list()
    r = httpx.post(f"{keyed.v2}/v2/models/ensemble/generate", headers={"api-key": KEY},
                   json={"text_input": "def", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["num_output_tokens"] == 3, r.text
    # the control plane stays closed to a client with a key
    r = httpx.post(f"{keyed.v2}/v2/repository/index", headers={"api-key": KEY}, timeout=10)
    assert r.status_code == 403


def test_with_keys_invented_ones_are_refused_and_the_right_one_is_limited(keyed):
    invented = asyncio.run(_burst(keyed.openai, 200,
                                  lambda i: {"Authorization": f"Bearer made-up-{i}"}))
    assert invented == [401] * 200
    same = asyncio.run(_burst(keyed.openai, 200, lambda i: {"Authorization": f"Bearer {KEY}"}))
    assert same.count(200) == 64 and same.count(429) == 136, sorted(set(same))
    _still_serving(keyed, {"Authorization": f"Bearer {KEY}"})


def test_with_keys_grpc_listens_on_loopback_only(keyed):
    """tritonserver's gRPC port cannot check API keys: make serve binds it to 127.0.0.1 when
    keys are set (and says so)."""
    assert "--grpc-address=127.0.0.1" in keyed.tritonserver_argv()
    assert "Triton gRPC bound to 127.0.0.1 only" in keyed.log.read_text()
    assert KEY not in keyed.log.read_text()
    assert not any(KEY in a for a in keyed.tritonserver_argv())


# ---- parsers: a 4xx naming the field, within a second -----------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000
V1 = [
    ("/v1/completions", b'{"prompt": ' + DEEP.encode() + b'}', None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
                             b'"chat_template_kwargs": {"a": ' + DEEP.encode() + b'}}', None),
    ("/v1/completions", b'{"prompt": "caf\xc3 \xff\xfe", "max_tokens": 2}', "prompt"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}',
     "messages.[0].content"),
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', "prompt"),
    ("/v1/completions", b'{"prompt\xff": "x"}', "prompt\ufffd"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b'}', None),  # > 4,300 digits
]


@pytest.mark.parametrize("path, body, param", V1)
def test_hostile_v1_bodies_get_a_named_400(served, path, body, param):
    t0 = time.monotonic()
    r = httpx.post(served.openai + path, content=body, timeout=10,
                   headers={"content-type": "application/json"})
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert served.ready()


GENERATE = [
    ({"text_input": "x", "max_tokens": "abc"}, "max_tokens"),
    ({"text_input": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"text_input": "x", "max_tokens": 3_000_000_000}, "max_tokens"),
    ({"text_input": "x", "max_tokens": True}, "max_tokens"),
    ({"text_input": "x", "stream": "yes"}, "stream"),
    ({"text_input": 5}, "text_input"),
    ({"text_input": None}, "text_input"),
    ({"text_input": ["a", "b"]}, "text_input"),
    ({"text_input": [[["a"]]]}, "text_input"),
    ({"text_input": "x", "bogus_input": 1}, "bogus_input"),
    ({"max_tokens": 4}, "text_input"),
    ({"text_input": "x", "parameters": [1]}, "parameters"),
    ({"text_input": "x", "id": 7}, "id"),
]


@pytest.mark.parametrize("body, param", GENERATE)
@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_hostile_generate_bodies_get_a_400_naming_the_input(served, body, param, route):
    t0 = time.monotonic()
    r = httpx.post(f"{served.v2}/v2/models/ensemble/{route}", json=body, timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 400, r.text
    assert f"'{param}'" in r.json()["error"], r.text


@pytest.mark.parametrize("body", [DEEP.encode(), b'{"text_input": "a\xff"}', b"[1]", b"{"])
def test_generate_bodies_that_are_not_json_objects_get_a_400(served, body):
    r = httpx.post(f"{served.v2}/v2/models/ensemble/generate", content=body, timeout=10)
    assert r.status_code == 400, r.text
    assert httpx.get(f"{served.v2}/v2/health/ready", timeout=5).status_code == 200


def test_a_get_with_a_body_is_forwarded_without_it(served):
    """A data-plane GET carrying a body (the proxy forwards GETs bodiless) is answered, not a 500."""
    for path in ("/v2", "/v2/models/stats", "/v2/models/llm/config"):
        r = httpx.request("GET", served.v2 + path, content=b"{}", timeout=10,
                          headers={"content-type": "application/json"})
        assert r.status_code == 200, (path, r.status_code, r.text)
    assert "Traceback" not in served.log.read_text()


def test_legal_generate_bodies_still_pass(served):
    for body in ({"text_input": "def", "max_tokens": 2},
                 {"text_input": ["def"], "max_tokens": [2], "stream": [False], "id": "a1",
                  "parameters": {"note": "x"}},
                 {"text_input": "def", "sampling_parameters": json.dumps({"max_tokens": 2}),
                  "exclude_input_in_output": True}):
        r = httpx.post(f"{served.v2}/v2/models/ensemble/generate", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["num_output_tokens"] == 2, r.text
    ids = httpx.post(f"{served.v2}/v2/models/llm/generate", timeout=60,
                     json={"input_ids": [1, 2, 3], "sampling_parameters": '{"max_tokens": 2}'})
    assert ids.status_code == 200, ids.text
    _still_serving(served)


# ---- bounded request cost ---------------------------------------------------------------------

MANY_STOPS = [f"stop{i}" for i in range(10_000)]


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "x", "stop": MANY_STOPS}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": ["y" * 257]}, "stop"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "stop": MANY_STOPS[:17]}, "stop"),
    ("/v1/completions", {"prompt": "x", "n": 65}, "n"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "best_of": 2}, "best_of"),
    ("/v1/completions", {"prompt": "x " * 2000}, "prompt"),
])
def test_request_cost_is_bounded_on_v1(served, path, body, param):
    t0 = time.monotonic()
    r = httpx.post(served.openai + path, json=body, timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_stop_lists_are_bounded_for_triton_clients_too(served):
    """gRPC and /v2 clients reach the engine's own SamplingParams checks."""
    params = json.dumps({"stop": MANY_STOPS, "max_tokens": 4})
    r = httpx.post(f"{served.v2}/v2/models/ensemble/generate", timeout=10,
                   json={"text_input": "x", "sampling_parameters": params})
    assert r.status_code == 400 and "stop must hold at most 16" in r.json()["error"], r.text
    g = stream(served.grpc_url, "x", {"stop": ["z" * 300], "max_tokens": 4})
    assert g.error is not None and "stop must hold strings of at most 256" in g.error
    _still_serving(served)


# ---- the same rules, without a server ---------------------------------------------------------

def test_max_prompt_tokens_counts_tokens_and_tokenizes_only_when_it_could_be_over(monkeypatch):
    from pagedllm_openai.config import ServiceConfig
    from pagedllm_openai.errors import OpenAIError
    from pagedllm_openai.request_limits import check_prompt_tokens
    from pagedllm_openai.tokenizer import ModelTokenizer
    from live_server import DEFAULT_MODEL

    config = ServiceConfig(model_dir=DEFAULT_MODEL, max_prompt_tokens=8)
    tokenizer = ModelTokenizer(DEFAULT_MODEL)
    check_prompt_tokens(config, tokenizer, list(range(8)), "prompt")
    with pytest.raises(OpenAIError, match="9 tokens") as e:
        check_prompt_tokens(config, tokenizer, list(range(9)), "prompt")
    assert e.value.param == "prompt" and e.value.status == 400
    with pytest.raises(OpenAIError) as e:
        check_prompt_tokens(config, tokenizer, "word " * 20, "messages")
    assert e.value.param == "messages"
    monkeypatch.setattr(tokenizer, "encode", lambda text: pytest.fail("tokenized"))
    check_prompt_tokens(config, tokenizer, "abc", "prompt")  # 3 bytes: never over 8 tokens


@pytest.mark.parametrize("field, value", [("max_n", 65), ("max_logprobs", 21),
                                          ("max_stop_sequences", 17), ("max_stop_chars", 257),
                                          ("max_prompt_tokens", 0)])
def test_limits_cannot_be_raised_past_the_engines(field, value):
    from pagedllm_openai.config import ServiceConfig
    from live_server import DEFAULT_MODEL
    with pytest.raises(ValueError, match=field):
        ServiceConfig(model_dir=DEFAULT_MODEL, **{field: value})


def test_api_keys_from_flags_environment_and_file(tmp_path):
    from pagedllm_openai.api_keys import ApiKeys, presented_key
    from pagedllm_openai.server import api_keys
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nk-file-1\n\n  k-file-2  \n")
    keys = api_keys(["k-flag"], "k-env-1, k-env-2", keys_file)
    assert keys == ("k-flag", "k-env-1", "k-env-2", "k-file-1", "k-file-2")
    verified = ApiKeys.of(keys)
    assert verified.client("k-env-2") == verified.client("k-env-2") != verified.client("k-flag")
    assert verified.client("k-env") is None and verified.client("") is None
    assert "k-flag" not in repr(verified)
    assert presented_key({"authorization": "Bearer  k1 "}) == "k1"
    assert presented_key({"api-key": "k2"}) == "k2"
    assert presented_key({"authorization": "Basic k3"}) is None
    for bad, where in (([""], "--api-key"), (["a b"], "--api-key")):
        with pytest.raises(ValueError, match=where):
            api_keys(bad, "", None)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        api_keys([], "", tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot be read"):
        api_keys([], "", tmp_path / "missing")

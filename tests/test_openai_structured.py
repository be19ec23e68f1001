"""Structured outputs, tool calling and vLLM's extra surface, through the OpenAI service and a real
tritonserver, with the official `openai` SDK and plain curl.

The default model (random weights) never writes JSON or a tool call by itself: every valid
output here is the grammar's doing. Oracles: jsonschema, and the offline engine for greedy runs.
"""
from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("tritonclient.grpc")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")

from live_service import start_service  # noqa: E402
from pagedllm import SamplingParams  # noqa: E402
from structured_schemas import TOOLS, schema  # noqa: E402
from test_openai_server import _sse  # noqa: E402

USER = [{"role": "user", "content": "Answer in JSON."}]


def curl(service, path: str, body: dict | None = None, *headers: str) -> tuple[int, dict, str]:
    """(status, headers, body) of `curl` against the service (POST with a JSON body, else GET)."""
    args = ["curl", "-s", "-i", f"{service.url}{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args, capture_output=True, timeout=120, check=True).stdout.decode()
    head, _, text = out.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    found = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, found, text


def _json_schema_format(i: int) -> dict:
    return {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema(i),
                                                   "strict": True}}


# ---- response_format ----------------------------------------------------------------------------

def test_100_json_schema_requests_validate_streamed_and_not(service):
    client = service.client()

    def ask(i: int) -> tuple[str, str | None]:
        """Requests 0-99 whole, 100-199 streamed, each pair with schema i % 100."""
        kw = dict(model="default", messages=USER, max_tokens=256, seed=i,
                  temperature=0.0 if i % 3 == 0 else 1.0,
                  response_format=_json_schema_format(i % 100))
        if i >= 100:
            chunks = list(client.chat.completions.create(stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return text, chunks[-1].choices[0].finish_reason
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(200)))
    for i, (text, finish) in enumerate(answers):
        assert finish == "stop", (i, text)
        jsonschema.validate(json.loads(text), schema(i % 100))


def test_json_object_choice_regex_and_grammar(service):
    client = service.client()
    r = client.chat.completions.create(model="default", messages=USER, max_tokens=64,
                                       temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")
    r = client.completions.create(model="default", prompt="Pick:", max_tokens=16,
                                  temperature=1.0, seed=4, n=3,
                                  extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert {c.text for c in r.choices} <= {"yes", "no"}
    pattern = r"[A-Z][a-z]{2,5} [0-9]{2}"
    r = client.chat.completions.create(model="default", messages=USER, max_tokens=32,
                                       extra_body={"structured_outputs": {"regex": pattern}})
    assert re.fullmatch(pattern, r.choices[0].message.content)
    status, _, body = curl(service, "/v1/completions", {
        "prompt": "x", "max_tokens": 32, "stream": True,
        "structured_outputs": {"grammar": 'root ::= "(" [1-9] ("+" [1-9])? ")"'}})
    assert status == 200
    text = "".join(e["choices"][0]["text"] for e in _sse(body) if isinstance(e, dict))
    assert re.fullmatch(r"\([1-9](\+[1-9])?\)", text)


# ---- tools --------------------------------------------------------------------------------------

def _params(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def test_named_tool_choice_streamed_and_not(service):
    client = service.client()
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(3):
        r = client.chat.completions.create(model="default", messages=USER, tools=TOOLS,
                                           tool_choice=choice, max_tokens=64, seed=seed)
        message = r.choices[0].message
        assert message.content is None and r.choices[0].finish_reason == "stop"
        [call] = message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        assert call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), _params("get_weather"))
    chunks = list(client.chat.completions.create(model="default", messages=USER, tools=TOOLS,
                                                 tool_choice=choice, max_tokens=64, stream=True))
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    jsonschema.validate(json.loads(arguments), _params("get_weather"))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_required_tool_choice(service):
    client = service.client()
    r = client.chat.completions.create(model="default", messages=USER, tools=TOOLS,
                                       tool_choice="required", max_tokens=128, seed=1,
                                       parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls"
    [call] = r.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), _params(call.function.name))
    chunks = list(client.chat.completions.create(model="default", messages=USER, tools=TOOLS,
                                                 tool_choice="required", max_tokens=128,
                                                 seed=2, stream=True, parallel_tool_calls=False))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and chunks[-1].choices[0].finish_reason == "tool_calls"
    for tc in calls:
        jsonschema.validate(json.loads(tc.function.arguments), _params(tc.function.name))


HERMES_CALL = (r'<tool_call>\{"name": "add", "arguments": \{"a": [0-9], "b": [0-9]\}\}'
               r'</tool_call>')


def test_auto_parses_the_models_tool_call_syntax(service):
    """The model is made to write Hermes' syntax (a regex), so the parser has a call to find."""
    client = service.client()
    kw = dict(model="default", messages=USER, tools=TOOLS, max_tokens=160,
              extra_body={"structured_outputs": {"regex": r"Sure\. " + HERMES_CALL}})
    r = client.chat.completions.create(**kw)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.content.strip() == "Sure."
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), _params("add"))
    chunks = list(client.chat.completions.create(stream=True, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [streamed] = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert content.strip() == "Sure." and streamed.function.name == "add"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    none = client.chat.completions.create(tool_choice="none", **kw)
    assert none.choices[0].message.tool_calls == [] and "<tool_call>" in \
        none.choices[0].message.content


def test_tool_results_go_back_through_the_template(service):
    messages = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    r = service.client().chat.completions.create(model="default", messages=messages,
                                                 tools=TOOLS, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    status, _, body = curl(service, "/tokenize", {"messages": messages})
    assert status == 200 and json.loads(body)["count"] > 0


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, extra, param, words", [
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "bogus"}}}}, "response_format.json_schema.schema",
     "not valid"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "uniqueItems": True}}}},
     "response_format.json_schema.schema", "cannot enforce"),
    ("/v1/completions", {"structured_outputs": {"regex": "(ab"}}, "structured_outputs",
     "not valid"),
    ("/v1/completions", {"structured_outputs": {"grammar": "root ::= "}}, "structured_outputs",
     "not valid"),
    ("/v1/completions", {"structured_outputs": {"regex": "a", "choice": ["b"]}},
     "structured_outputs", "exactly one"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "bogus"}}}], "tool_choice": "required"},
     "tools", "not valid"),
    ("/v1/chat/completions", {"tools": TOOLS, "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice", "needs tools"),
    ("/v1/completions", {"frobnicate": True}, "frobnicate", "unknown field"),
    ("/v1/chat/completions", {"store": True}, "store", "unknown field"),
    ("/v1/completions", {"logit_bias": {"99999": 1}}, "logit_bias", "logit_bias"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_constraints_are_400s_naming_the_field(service, path, extra, param, words, stream):
    base = {"messages": USER} if "chat" in path else {"prompt": "x"}
    status, _, body = curl(service, path, {**base, "max_tokens": 8, "stream": stream, **extra})
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["param"] == param and words in error["message"], error


# ---- the rest of vLLM's surface -----------------------------------------------------------------

def test_completion_prompt_forms(service, offline):
    tok = offline.get_tokenizer()
    texts = ["def fib(n):", "Once upon a time"]
    want = [o.outputs[0].text for o in offline.generate(
        texts, SamplingParams(temperature=0, max_tokens=8))]
    client = service.client()
    forms = [texts, [tok.encode(t) for t in texts]]
    for prompt in forms:
        r = client.completions.create(model="default", prompt=prompt, max_tokens=8,
                                      temperature=0, n=2)
        assert [c.index for c in r.choices] == [0, 1, 2, 3]
        assert [c.text for c in r.choices] == [want[0], want[0], want[1], want[1]]
        chunks = list(client.completions.create(model="default", prompt=prompt, max_tokens=8,
                                                temperature=0, stream=True))
        by_index = {}
        for c in chunks:
            for choice in c.choices:
                by_index[choice.index] = by_index.get(choice.index, "") + choice.text
        assert by_index == {0: want[0], 1: want[1]}
    one = client.completions.create(model="default", prompt=tok.encode(texts[0]), max_tokens=8,
                                    temperature=0)
    assert one.choices[0].text == want[0]


def test_vllm_sampling_fields_equal_the_offline_engine(service, offline):
    client = service.client()
    base = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    plain = offline.generate(["Hello"], base)[0].outputs[0]
    cases = [
        {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3},
        {"stop_token_ids": [plain.token_ids[4]], "ignore_eos": False},
        {"min_tokens": 3},
        {"stop": [plain.text[3:6]], "include_stop_str_in_output": True},
        {"logit_bias": {"42": 100}},
        {"allowed_token_ids": [7, 300, 1000]},
        {"bad_words": [offline.get_tokenizer().decode(plain.token_ids[2:3]).strip()]},
        {"skip_special_tokens": False},
    ]
    for extra in cases:
        fields = {"temperature": 0, "max_tokens": 12, "ignore_eos": True, **extra}
        engine = dict(fields)
        if "logit_bias" in engine:
            engine["logit_bias"] = {int(k): v for k, v in engine["logit_bias"].items()}
        want = offline.generate(["Hello"], SamplingParams(**engine))[0].outputs[0]
        body = {k: v for k, v in fields.items() if k not in ("temperature", "max_tokens")}
        r = client.completions.create(model="default", prompt="Hello", temperature=0,
                                      max_tokens=12, extra_body=body)
        assert r.choices[0].text == want.text, extra
        assert r.choices[0].finish_reason == want.finish_reason, extra
    chat = client.chat.completions.create(model="default", messages=USER, temperature=0,
                                          max_completion_tokens=5, extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 5 and chat.choices[0].finish_reason == "length"


def test_tokenize_detokenize_version_and_request_id(service, offline):
    tok = offline.get_tokenizer()
    status, headers, body = curl(service, "/tokenize", {"prompt": "Hello world"},
                                 "X-Request-Id: my-req-1")
    assert status == 200 and headers["x-request-id"] == "my-req-1"
    data = json.loads(body)
    assert data["tokens"] == tok.encode("Hello world") and data["count"] == len(data["tokens"])
    assert data["max_model_len"] == 2048
    status, _, body = curl(service, "/detokenize", {"tokens": data["tokens"]})
    assert status == 200 and json.loads(body) == {"prompt": "Hello world"}
    status, _, body = curl(service, "/version")
    assert status == 200 and json.loads(body)["version"] == "0.1.0"
    client = service.client()
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=USER, max_tokens=2, extra_headers={"X-Request-Id": "abc-42"})
    assert raw.headers["x-request-id"] == "abc-42"
    assert raw.parse().choices[0].finish_reason in ("stop", "length")
    status, headers, _ = curl(service, "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2},
                              "X-Request-Id: two")
    assert status == 200 and headers["x-request-id"] == "two"
    status, headers, _ = curl(service, "/v1/models")
    assert "x-request-id" not in headers and "access-control-allow-origin" not in headers


def test_cors_origins_only_when_configured(triton, service, tmp_path):
    preflight = ("-X", "OPTIONS")
    own = start_service(triton, tmp_path, "--allowed-origins", "http://app.example")
    try:
        for s, allowed in ((service, None), (own, "http://app.example")):
            out = subprocess.run(
                ["curl", "-s", "-i", *preflight, f"{s.url}/v1/chat/completions",
                 "-H", "Origin: http://app.example",
                 "-H", "Access-Control-Request-Method: POST"],
                capture_output=True, text=True, timeout=30, check=True).stdout.lower()
            if allowed is None:
                assert "access-control-allow-origin" not in out
            else:
                assert f"access-control-allow-origin: {allowed}" in out
    finally:
        own.stop()


# ---- Triton's own API: sampling_parameters with vLLM's names ------------------------------------

def test_triton_sampling_parameters_carry_structured_outputs(triton):
    from live_server import stream
    params = {"max_tokens": 200, "temperature": 1.0, "seed": 5,
              "structured_outputs": {"json": schema(7)}}
    result = stream(triton.grpc_url, "Hello", params)
    assert result.error is None and result.finish_reason == "stop"
    jsonschema.validate(json.loads(result.text), schema(7))
    old = stream(triton.grpc_url, "Hello", {"max_tokens": 8, "guided_decoding":
                                            json.dumps({"choice": ["left", "right"]})},
                 stream=False)
    assert old.text in ("left", "right")
    bad = stream(triton.grpc_url, "Hello", {"structured_outputs": {"regex": "(ab"}})
    assert bad.error is not None and "structured_outputs.regex is not valid" in bad.error

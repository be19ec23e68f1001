"""Tool calling and response_format in the OpenAI service, without a server: parsing the model's
tool-call syntax (whole and streamed), the grammars of required / named tool choices, the
request models' refusals, and Triton's errors mapped to the field the request used."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pagedllm_openai.chat_template import ChatTemplate
from pagedllm_openai.errors import OpenAIError, from_triton
from pagedllm_openai.response_format import ResponseFormat, structured_outputs
from pagedllm_openai.schemas import ChatCompletionRequest, CompletionRequest
from pagedllm_openai.tool_answers import ChoiceAnswer
from pagedllm_openai.tool_parsers import ToolCallStream, extract, parser_for_template
from pagedllm_openai.tools import Tool, constraint, messages_for_template, mode

from structured_schemas import TOOLS

HERMES = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
          '"days": 2}}\n</tool_call>\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}'
          '</tool_call>')
LLAMA = '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}; ' \
        '{"name": "get_weather", "parameters": {"city": "Rome", "days": 1}}'


def test_hermes_and_llama3_whole():
    content, calls = extract("hermes", HERMES)
    assert content.strip() == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "days": 2}), ("add", {"a": 1, "b": 2})]
    assert len({c.id for c in calls}) == 2 and calls[0].id.startswith("call_")
    content, calls = extract("llama3_json", LLAMA)
    assert content is None and [c.function.name for c in calls] == ["add", "get_weather"]
    assert extract("hermes", "no calls <tool_call>{broken</tool_call>") == \
        ("no calls <tool_call>{broken</tool_call>", [])
    assert extract("llama3_json", "Plain {text}") == ("Plain {text}", [])


@pytest.mark.parametrize("parser, text", [("hermes", HERMES), ("llama3_json", LLAMA),
                                          ("hermes", "just text <tool_ca"),
                                          ("llama3_json", "  just text")])
@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_streaming_gives_what_the_whole_text_gives(parser, text, piece):
    stream = ToolCallStream(parser)
    content, calls = "", []
    for i in range(0, len(text), piece):
        c, d = stream.feed(text[i:i + piece])
        content += c
        calls += d
    c, d = stream.finish()
    content += c
    calls += d
    whole_content, whole_calls = extract(parser, text)
    assert content.strip() == (whole_content or "").strip()
    assert [(d.index, d.function.name, d.function.arguments) for d in calls] == \
        [(i, c.function.name, c.function.arguments) for i, c in enumerate(whole_calls)]
    assert all(d.id and d.type == "function" for d in calls)


def test_parser_from_template():
    assert parser_for_template("{{ '<tool_call>' }}") == "hermes"
    assert parser_for_template("{{ '<|python_tag|>' }} ipython") == "llama3_json"
    assert parser_for_template(None) == "hermes"


def test_tool_modes_and_grammars():
    tools = [Tool.model_validate(t) for t in TOOLS]
    assert mode(None, None) is None and mode(tools, None) == "auto"
    assert mode(tools, "none") is None and mode(tools, "required") == "required"
    named = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
         "tool_choice": {"type": "function", "function": {"name": "add"}}}).tool_choice
    assert mode(tools, named) == "named"
    so, renames = constraint(tools, named, True)
    assert so == {"json": TOOLS[1]["function"]["parameters"]}
    assert renames == {"structured_outputs.json": "tools.[1].function.parameters"}
    so, _ = constraint(tools, "required", False)
    assert so["json"]["minItems"] == 1 and so["json"]["maxItems"] == 1
    with pytest.raises(OpenAIError) as e:
        mode(None, "required")
    assert e.value.param == "tool_choice"
    bad = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
         "tool_choice": {"type": "function", "function": {"name": "nope"}}}).tool_choice
    with pytest.raises(OpenAIError, match="nope"):
        mode(tools, bad)


def test_choice_answers():
    args = '{"a": 1, "b": 2}'
    content, calls, finish = ChoiceAnswer("auto", "hermes", parallel=False).whole(HERMES, None)
    assert [c.function.name for c in calls] == ["get_weather"] and finish == "tool_calls"
    one = ChoiceAnswer("auto", "hermes", parallel=False)
    streamed = one.feed(HERMES)[1] + one.end("stop")[1]
    assert [c.function.name for c in streamed] == ["get_weather"]
    content, calls, finish = ChoiceAnswer("named", "hermes", "add").whole(args, "stop")
    assert content is None and calls[0].function.arguments == args and finish == "stop"
    required = json.dumps([{"name": "add", "parameters": {"a": 1, "b": 2}}])
    content, calls, finish = ChoiceAnswer("required", "hermes").whole(required, "stop")
    assert content is None and calls[0].function.name == "add" and finish == "tool_calls"
    assert ChoiceAnswer("required", "hermes").whole(required[:-3], "length") == \
        (required[:-3], [], "length")
    streamed = ChoiceAnswer("named", "hermes", "add")
    pieces = [streamed.feed(args[i:i + 4]) for i in range(0, len(args), 4)]
    first = pieces[0][1][0]
    assert first.id and first.function.name == "add"
    assert "".join(p[1][0].function.arguments for p in pieces) == args
    assert all(p[1][0].id is None for p in pieces[1:])


def test_response_format_and_structured_outputs():
    rf = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": True}})
    assert structured_outputs(rf, None) == ({"json": {"type": "object"}},
                                            {"structured_outputs.json":
                                             "response_format.json_schema.schema"})
    assert structured_outputs(ResponseFormat(type="json_object"), None)[0] == \
        {"json_object": True}
    assert structured_outputs(ResponseFormat(type="text"), None) == (None, {})
    assert structured_outputs(None, {"choice": ["a"]})[0] == {"choice": ["a"]}
    with pytest.raises(OpenAIError) as e:
        structured_outputs(None, {"choice": ["a"], "regex": "b"})
    assert e.value.param == "structured_outputs"
    with pytest.raises(OpenAIError):
        structured_outputs(ResponseFormat(type="json_object"), {"regex": "a"})


@pytest.mark.parametrize("body, loc", [
    ({"prompt": "x", "frobnicate": 1}, ("frobnicate",)),
    ({"prompt": "x", "response_format": {"type": "yaml"}}, ("response_format", "type")),
    ({"prompt": "x", "logit_bias": {"a": 1}}, ("logit_bias",)),
    ({"prompt": "x", "logit_bias": {"5": 101}}, ("logit_bias",)),
    ({"prompt": "x", "stream_options": {"include_usage": True, "x": 1}}, ("stream_options",)),
    ({"prompt": ["a", ""]}, ("prompt",)),
])
def test_unknown_and_bad_fields_are_refused(body, loc):
    with pytest.raises(ValidationError) as e:
        CompletionRequest.model_validate(body)
    assert e.value.errors()[0]["loc"][:len(loc)] == loc


def test_several_prompts():
    assert CompletionRequest(prompt=["a", "b"]).prompts() == ["a", "b"]
    assert CompletionRequest(prompt=[[1, 2], [3]]).prompts() == [[1, 2], [3]]
    assert CompletionRequest(prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(prompt="a").prompts() == ["a"]


def test_engine_errors_name_the_field_the_request_used():
    message = "structured_outputs.json is not valid: Unsupported type \"bogus\""
    renames = {"structured_outputs.json": "response_format.json_schema.schema"}
    assert from_triton(message, "messages", renames).param == "response_format.json_schema.schema"
    assert from_triton("input 'sampling_parameters': structured_outputs.regex: this server "
                       "cannot enforce", "prompt", {"structured_outputs.regex":
                                                    "structured_outputs"}).param == \
        "structured_outputs"


def test_tools_and_tool_results_reach_the_template():
    source = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n"
              "{% endif %}{% for m in messages %}{{ m.role }}:"
              "{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments.city }}{% endif %}"
              "{{ m.content }}|{% endfor %}")
    template = ChatTemplate(source, {})
    messages = messages_for_template([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Rome", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    text = template.render(messages, tools=TOOLS)
    assert text == "TOOLS:get_weather;add;user:weather?|assistant:Rome|tool:sunny|"


def test_the_engine_request_id_is_tritons_unless_taken():
    import fake_pb_utils
    fake_pb_utils.install()
    from pagedllm_triton.llm_model import engine_request_id
    assert engine_request_id("abc-42", "tok", {}) == "abc-42"
    assert engine_request_id("abc-42", "tok", {"abc-42": object()}) == "tok"
    assert engine_request_id("", "tok", {}) == "tok"

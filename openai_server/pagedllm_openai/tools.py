"""`tools` and `tool_choice` of a chat request: what the engine must enforce, what to parse after.

    tool_choice  "none"        the tools reach the chat template; the output is plain content
                 "auto"        (the default with tools) the model decides; its tool-call syntax
                               is parsed from the output (tool_parsers.py)
                 "required"    the grammar makes the output a JSON array of one or more
                               {"name": <a tool>, "parameters": <valid arguments>} (vLLM's form)
                 {"type": "function", "function": {"name": N}}
                               the grammar makes the output N's arguments, valid against N's
                               parameters schema

`required` and a named function answer `tool_calls` with content null; their arguments validate
by construction. A named call finishes "stop" (OpenAI's answer to a forced function), `required`
and parsed `auto` calls "tool_calls".
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pagedllm_openai.errors import bad_request


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.:-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of `tools` (functions only, as OpenAI's chat API)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class _NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one function."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: _NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice

ANY_OBJECT = {"type": "object"}


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call of the answer (arguments as JSON text, as OpenAI sends them)."""

    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A streamed piece of tool call `index`: the first carries its id, type and name."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


def mode(tools: list[Tool] | None, choice: ToolChoice | None) -> str | None:
    """None (no tool calls: no tools, or "none"), "auto", "required" or "named".

    Raises:
        OpenAIError: 400 naming tool_choice when it needs tools that are not there.
    """
    if choice is None:
        return "auto" if tools else None
    if choice == "none":
        return None
    if not tools:
        raise bad_request(f"tool_choice {_show(choice)} needs tools", "tool_choice")
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in [t.function.name for t in tools]:
            raise bad_request(f"tool_choice names the function {choice.function.name!r}, "
                              "which is not among the tools", "tool_choice")
        return "named"
    return choice


def _show(choice: ToolChoice) -> str:
    return repr(choice) if isinstance(choice, str) else repr(choice.function.name)


def constraint(tools: list[Tool], choice: ToolChoice, parallel: bool
               ) -> tuple[dict, dict[str, str]]:
    """The structured_outputs of a `required` or named tool choice, and the renames of the
    engine's field to this request's (for error messages)."""
    if isinstance(choice, NamedToolChoice):
        i = [t.function.name for t in tools].index(choice.function.name)
        params = tools[i].function.parameters or ANY_OBJECT
        return {"json": params}, {"structured_outputs.json": f"tools.[{i}].function.parameters"}
    calls = {"anyOf": [
        {"type": "object",
         "properties": {"name": {"enum": [t.function.name]},
                        "parameters": t.function.parameters or ANY_OBJECT},
         "required": ["name", "parameters"], "additionalProperties": False}
        for t in tools]}
    schema: dict[str, Any] = {"type": "array", "items": calls, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return {"json": schema}, {"structured_outputs.json": "tools"}


def parse_required(text: str) -> list[ToolCall] | None:
    """The calls of a `required` answer (None when it is not a complete array: cut short)."""
    try:
        calls = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(calls, list):
        return None
    return [ToolCall(function=FunctionCall(name=c["name"], arguments=json.dumps(
        c["parameters"], ensure_ascii=False))) for c in calls
        if isinstance(c, dict) and "name" in c and "parameters" in c]


def messages_for_template(messages: list[dict]) -> list[dict]:
    """Chat messages as templates expect them: an assistant's tool_calls with their arguments
    as objects (templates write them with tojson), not JSON text (as OpenAI sends them)."""
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and isinstance(calls, list):
            m = {**m, "tool_calls": [_arguments_as_object(c) for c in calls]}
        out.append(m)
    return out


def _arguments_as_object(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        try:
            arguments = json.loads(function["arguments"])
        except json.JSONDecodeError:
            return call
        return {**call, "function": {**function, "arguments": arguments}}
    return call

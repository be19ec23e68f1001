"""The model's own tool-call syntax -> tool calls (`tool_choice: auto`), whole or streamed.

Two syntaxes, picked by `--tool-call-parser` (or from the chat template's text):
    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number, anywhere
                 (Hermes 2/3, Qwen 2.5/3 and most templates written after them)
    llama3_json  the whole answer is {"name": ..., "parameters": {...}}, optionally after
                 <|python_tag|>, several joined by ";" (Llama 3.1-3.3's JSON tool calling)

Streaming: text that cannot be part of a call is sent as content at once (a possible start of
`<tool_call>` is held back until it is known); a call is sent whole, as one `delta.tool_calls`
entry, once its closing tag (hermes) or the end (llama3_json) comes. Whatever does not parse as
a call stays content.
"""
from __future__ import annotations

import json
import re

from pagedllm_openai.tools import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall

PARSERS = ("hermes", "llama3_json")
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"


def parser_for_template(template_source: str | None) -> str:
    """The parser a chat template's tool syntax calls for (hermes unless it is Llama 3's)."""
    source = template_source or ""
    if _OPEN not in source and (_PYTHON_TAG in source or "ipython" in source):
        return "llama3_json"
    return "hermes"


def _call(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # (some models write the arguments as JSON text)
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(function=FunctionCall(name=obj["name"],
                                          arguments=json.dumps(arguments, ensure_ascii=False)))


def _hermes(text: str) -> tuple[str, list[ToolCall]]:
    content, calls, pos = [], [], 0
    for m in re.finditer(re.escape(_OPEN) + r"(.*?)" + re.escape(_CLOSE), text, re.DOTALL):
        try:
            call = _call(json.loads(m.group(1)))
        except json.JSONDecodeError:
            call = None
        if call is None:
            continue
        content.append(text[pos:m.start()])
        calls.append(call)
        pos = m.end()
    content.append(text[pos:])
    return "".join(content), calls


def _llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    if not body.startswith("{"):
        return text, []
    decoder, calls, i = json.JSONDecoder(), [], 0
    while i < len(body):
        try:
            obj, end = decoder.raw_decode(body, i)
        except json.JSONDecodeError:
            return text, []
        call = _call(obj)
        if call is None:
            return text, []
        calls.append(call)
        i = end
        while i < len(body) and body[i] in " \t\r\n;":
            i += 1
    return "", calls


def extract(parser: str, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a whole answer; content None when the answer is only calls."""
    content, calls = (_hermes if parser == "hermes" else _llama3)(text)
    if calls and not content.strip():
        return None, calls
    return content, calls


class ToolCallStream:
    """One streamed choice's text -> content deltas and whole tool calls.

    Args:
        parser: one of PARSERS.
    """

    def __init__(self, parser: str) -> None:
        self.parser = parser
        self._held = ""       # text not sent yet
        self._buffering = False  # llama3_json: the answer is a call (sent at the end)
        self._decided = parser == "hermes"
        self.num_calls = 0

    def feed(self, text: str) -> tuple[str, list[DeltaToolCall]]:
        """The content to send now, and the calls completed by `text`."""
        self._held += text
        if self.parser == "llama3_json":
            if not self._decided:
                head = self._held.lstrip()
                if not head or (len(head) < len(_PYTHON_TAG) and _PYTHON_TAG.startswith(head)):
                    return "", []  # (it may still become the tag)
                self._decided = True
                self._buffering = head.startswith(("{", _PYTHON_TAG))
            if self._buffering:
                return "", []
            out, self._held = self._held, ""
            return out, []
        return self._hermes_feed()

    def _hermes_feed(self) -> tuple[str, list[DeltaToolCall]]:
        content, calls = "", []
        while True:
            start = self._held.find(_OPEN)
            if start == -1:
                keep = _partial_suffix(self._held, _OPEN)
                content += self._held[:len(self._held) - keep]
                self._held = self._held[len(self._held) - keep:]
                return content, calls
            end = self._held.find(_CLOSE, start)
            if end == -1:
                content += self._held[:start]
                self._held = self._held[start:]
                return content, calls
            block = self._held[start:end + len(_CLOSE)]
            _, found = _hermes(block)
            if found:
                content += self._held[:start]
                calls += [self._delta(c) for c in found]
            else:
                content += self._held[:end + len(_CLOSE)]
            self._held = self._held[end + len(_CLOSE):]

    def finish(self) -> tuple[str, list[DeltaToolCall]]:
        """What is left at the end of the choice: its content and its calls."""
        held, self._held = self._held, ""
        if self.parser == "llama3_json" and self._buffering:
            content, found = _llama3(held)
            return content, [self._delta(c) for c in found]
        return held, []

    def _delta(self, call: ToolCall) -> DeltaToolCall:
        index, self.num_calls = self.num_calls, self.num_calls + 1
        return DeltaToolCall(index=index, id=call.id, type="function",
                             function=DeltaFunctionCall(name=call.function.name,
                                                        arguments=call.function.arguments))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0

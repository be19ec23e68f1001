"""What one chat choice's text becomes, given the request's tool mode: content, tool calls or both.

    mode None        the text is the content
    "named"          the text is the named function's arguments (the grammar made it so): one
                     tool call, streamed as its arguments come; finish "stop"
    "required"       the text is a JSON array of calls (the grammar made it so): parsed at the
                     end; finish "tool_calls"
    "auto"           the model's own tool-call syntax, parsed (tool_parsers.py); finish
                     "tool_calls" when it made calls

A choice cut short (finish "length") keeps its text as content and its finish reason: its calls
would be incomplete. Without parallel tool calls, an "auto" answer keeps only its first call
("required" is held to one call by its grammar).
"""
from __future__ import annotations

from pagedllm_openai.tool_parsers import ToolCallStream, extract
from pagedllm_openai.tools import (DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall,
                                   parse_required)


class ChoiceAnswer:
    """One choice's answer, whole (`whole`) or streamed (`feed` per piece, then `end`).

    Args:
        mode: None, "auto", "required" or "named" (tools.mode).
        parser: the tool-call parser for "auto" (tool_parsers.PARSERS).
        function: the named function ("named").
        parallel: whether several calls may be made (parallel_tool_calls).
    """

    def __init__(self, mode: str | None, parser: str, function: str | None = None,
                 parallel: bool = True) -> None:
        self.mode = mode
        self.parallel = parallel
        self.parser = parser
        self.function = function
        self._stream = ToolCallStream(parser) if mode == "auto" else None
        self._text = ""
        self._named: ToolCall | None = None

    def whole(self, text: str, finish: str | None) -> tuple[str | None, list[ToolCall], str | None]:
        """(content, tool calls, finish reason) of the whole text."""
        if self.mode is None or finish == "length":
            return text, [], finish
        if self.mode == "named":
            return None, [ToolCall(function=FunctionCall(name=self.function, arguments=text))], \
                finish
        if self.mode == "required":
            calls = parse_required(text)
            return (None, calls, "tool_calls") if calls else (text, [], finish)
        content, calls = extract(self.parser, text)
        calls = calls if self.parallel else calls[:1]
        return content, calls, ("tool_calls" if calls else finish)

    def feed(self, text: str) -> tuple[str, list[DeltaToolCall]]:
        """(content, tool-call pieces) to send now for this piece of text."""
        if self.mode is None:
            return text, []
        if self.mode == "auto":
            return self._first_only(*self._stream.feed(text))
        self._text += text
        if self.mode == "named" and text:
            if self._named is None:
                self._named = ToolCall(function=FunctionCall(name=self.function, arguments=""))
                return "", [DeltaToolCall(index=0, id=self._named.id, type="function",
                                          function=DeltaFunctionCall(name=self.function,
                                                                     arguments=text))]
            return "", [DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=text))]
        return "", []

    def _first_only(self, content: str, calls: list[DeltaToolCall]
                    ) -> tuple[str, list[DeltaToolCall]]:
        return content, calls if self.parallel else [c for c in calls if c.index == 0]

    def end(self, finish: str | None) -> tuple[str, list[DeltaToolCall], str | None]:
        """(content, tool-call pieces, finish reason) at the end of the choice."""
        if self.mode is None:
            return "", [], finish
        if self.mode == "auto":
            content, calls = self._first_only(*self._stream.finish())
            return content, calls, ("tool_calls" if self._stream.num_calls else finish)
        if self.mode == "named":
            return "", [], finish
        calls = parse_required(self._text) if finish != "length" else None
        if not calls:
            return self._text, [], finish
        return "", [DeltaToolCall(index=i, id=c.id, type="function",
                                  function=DeltaFunctionCall(name=c.function.name,
                                                             arguments=c.function.arguments))
                    for i, c in enumerate(calls)], "tool_calls"

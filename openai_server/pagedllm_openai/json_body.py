"""A request body -> one JSON object, or a 400 that says what is wrong and, where it can, where.

Python's json module alone answers some hostile bodies badly: 10,000 nested brackets raise
RecursionError (a 500 before), and bytes that are not UTF-8 inside a string, or a JSON escape of
a lone surrogate ("\\ud800"), parse into a str that cannot be encoded again, so the error answer
itself failed and the connection dropped. Here:

- the body is decoded as UTF-8 with surrogateescape, so invalid bytes survive parsing as lone
  surrogates and can be found, with the field that holds them;
- nesting deeper than MAX_DEPTH is refused (RecursionError included);
- any string or key holding a lone surrogate is refused, naming its field (`messages.[0].content`,
  the way service.py names pydantic's fields).
"""
from __future__ import annotations

import json
import re

from pagedllm_openai.errors import OpenAIError, bad_request

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (the APIs need about 5)."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # "\ud800" as JSON writes it


def parse_json_object(body: bytes) -> dict:
    """The body as a JSON object.

    Raises:
        OpenAIError: 400, the body is not JSON, not an object, nested deeper than MAX_DEPTH, or
            holds text that is not valid UTF-8 (`param`: the field, where one is known).
    """
    text = body.decode("utf-8", errors="surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {e}", None) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as e:  # e.g. an integer past Python's 4,300-digit conversion limit
        raise bad_request(f"the request body holds a number this server cannot read: {e}", None) from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", None)
    if (text.count("[") + text.count("{") > MAX_DEPTH or _SURROGATE.search(text)
            or _ESCAPED_SURROGATE.search(text)):
        _walk(data)
    return data


def _too_deep() -> OpenAIError:
    return bad_request(f"the request body nests arrays and objects deeper than {MAX_DEPTH} "
                       "levels", None)


def _walk(data: dict) -> None:
    """Checks the depth and the text of every value (iteratively: no recursion to run out of)."""
    stack: list[tuple[object, tuple, int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, (*path, key))
                stack.append((item, (*path, key), depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, (dict, list, str)):
                    stack.append((item, (*path, i), depth + 1))
        elif isinstance(value, str):
            _check_text(value, path)


def _check_text(text: str, path: tuple) -> None:
    if _SURROGATE.search(text):
        param = field_name(path)
        raise bad_request(f"{param}: is not valid UTF-8 text (bytes that are not UTF-8, or an "
                          "escaped lone surrogate)", param)


def field_name(path: tuple) -> str:
    """('messages', 0, 'content') -> 'messages.[0].content' (OpenAI's spelling); a lone surrogate
    in a key shows as U+FFFD (the answer must be encodable)."""
    name = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path)
    return _SURROGATE.sub("\ufffd", name)

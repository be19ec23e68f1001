"""JSON Schemas for the structured-output tests: varied, and with outputs short enough to finish.

The default model has random weights and never ends JSON by itself, so every schema bounds its
output: enums, integers with bounds, short strings, arrays with maxItems, no free-form numbers.
"""
from __future__ import annotations

import random

COLORS = ["red", "green", "blue", "cyan", "black", "white", "amber"]


def schema(i: int) -> dict:
    """The i-th schema: an object with nested arrays of objects, enums, bounded integers and
    required fields; each i draws other bounds, enums and required sets."""
    rng = random.Random(i)
    lo = rng.randint(-50, 50)
    item = {"type": "object",
            "properties": {"k": {"type": "integer", "minimum": 0, "maximum": rng.randint(1, 99)}},
            "required": ["k"], "additionalProperties": False}
    properties = {
        "id": {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)},
        "color": {"enum": rng.sample(COLORS, rng.randint(1, 4))},
        "items": {"type": "array", "items": item, "minItems": rng.randint(0, 1), "maxItems": 1},
        "name": {"type": "string", "maxLength": rng.randint(1, 3)},
        "tags": {"type": "array", "items": {"enum": rng.sample(COLORS, 3)}, "maxItems": 2},
    }
    names = list(properties)
    required = ["id", "items"] + rng.sample(names[2:], rng.randint(0, 2))
    if rng.random() < 0.5:
        required.insert(1, "color")
    return {"type": "object", "properties": properties, "required": sorted(set(required)),
            "additionalProperties": False}


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"enum": ["Paris", "Rome", "Tokyo"]},
                                      "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                       "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Adds two small numbers.",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                      "b": {"type": "integer", "minimum": 0, "maximum": 9}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]

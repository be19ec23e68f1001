"""A /v2 generate body checked against the model's declared inputs before Triton sees it.

Triton 2.51's generate extension maps each JSON key to the input of that name, and answers a
value of the wrong type with a 500 naming no field ("Unable to parse 'data': attempt to access
JSON non-signed-integer as signed-integer", for `max_tokens: "abc"`, `max_tokens: 1.5`,
`stream: "yes"`, or a numeric `text_input`); it wraps an int32 past 2**31 to a negative number;
and it ignores a key that names no input. Here each key must be a declared input (or `id`, or
`parameters`, the extension's own), each value a scalar or a list of the input's type and element
count, and each required input present: else a 400 naming it. The declared inputs are read once
per model from Triton's model config (GET /v2/models/M/config), through the proxy's own client.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from pagedllm_openai.errors import bad_request

_INT_RANGES = {f"TYPE_INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)}
_INT_RANGES.update({f"TYPE_UINT{b}": (0, 2 ** b - 1) for b in (8, 16, 32, 64)})
_FLOATS = ("TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_BF16")
_JSON_KIND = {"TYPE_STRING": "a string", "TYPE_BOOL": "a bool"}


@dataclass(frozen=True)
class Input:
    """One declared input: its name, Triton data type, dims (batch dimension excluded)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool


@dataclass(frozen=True)
class ModelInputs:
    """The inputs a model declares (from its config JSON)."""

    model: str
    inputs: dict[str, Input]

    @classmethod
    def from_config(cls, model: str, config: dict) -> ModelInputs:
        inputs = {}
        for spec in config.get("input", []):
            name = spec["name"]
            inputs[name] = Input(name, spec.get("data_type", ""),
                                 tuple(int(d) for d in spec.get("dims", [])),
                                 bool(spec.get("optional", False)))
        return cls(model, inputs)

    def check(self, body: dict) -> None:
        """400 naming the first key that is not an input, holds a value the input cannot take,
        or a required input that is missing."""
        for key, value in body.items():
            if key == "id":
                if not isinstance(value, str):
                    raise bad_request(f"'id' must be a string, got {_kind(value)}", "id")
            elif key == "parameters":
                _check_parameters(value)
            elif key in self.inputs:
                _check_value(self.inputs[key], value)
            else:
                raise bad_request(f"'{key}' is not an input of model '{self.model}'; its inputs: "
                                  f"{', '.join(self.inputs)} (and 'id', 'parameters')", key)
        for spec in self.inputs.values():
            if not spec.optional and spec.name not in body:
                raise bad_request(f"the request has no '{spec.name}': model '{self.model}' "
                                  "requires it", spec.name)


def _kind(value) -> str:
    return {bool: "a bool", int: "an int", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _check_parameters(value) -> None:
    if not isinstance(value, dict):
        raise bad_request(f"'parameters' must be an object, got {_kind(value)}", "parameters")
    for key, item in value.items():
        if not isinstance(item, (str, bool, int, float)):
            raise bad_request(f"parameters.{key} must be a string, number or bool, got "
                              f"{_kind(item)}", f"parameters.{key}")


def _check_value(spec: Input, value) -> None:
    elements = _flatten(spec, value)
    fixed = math.prod(d for d in spec.dims if d >= 0)
    if all(d >= 0 for d in spec.dims) and len(elements) != fixed:
        raise bad_request(f"input '{spec.name}' takes {fixed} element(s) (shape "
                          f"{list(spec.dims)}), got {len(elements)}", spec.name)
    if not elements or (fixed and len(elements) % fixed):
        raise bad_request(f"input '{spec.name}' cannot take {len(elements)} element(s) (shape "
                          f"{list(spec.dims)})", spec.name)
    for element in elements:
        problem = _type_problem(spec.data_type, element)
        if problem:
            raise bad_request(f"input '{spec.name}' must be {problem}, got "
                              f"{_kind(element)} {element!r:.40}", spec.name)


def _flatten(spec: Input, value) -> list:
    """The elements of a scalar or of nested lists at most len(dims) deep."""
    out, stack = [], [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= max(1, len(spec.dims)):
                raise bad_request(f"input '{spec.name}' nests lists deeper than its shape "
                                  f"{list(spec.dims)}", spec.name)
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            out.append(item)
    return out


def _type_problem(data_type: str, value) -> str | None:
    """What `value` should have been for `data_type`; None when it is fine."""
    if data_type in _JSON_KIND:
        ok = isinstance(value, str) if data_type == "TYPE_STRING" else isinstance(value, bool)
        return None if ok else _JSON_KIND[data_type]
    if data_type in _INT_RANGES:
        lo, hi = _INT_RANGES[data_type]
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return None
        return f"an integer in [{lo}, {hi}] ({data_type[5:]})"
    if data_type in _FLOATS:
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            return None
        return "a finite number"
    return None  # a type this check does not know: Triton's to judge


class InputsCache:
    """ModelInputs per model (and version), read from Triton's model config on first use.

    NOTE: only an answered config is kept: while a model is not loaded its generate requests go
    to Triton unchecked, and Triton refuses them itself.
    """

    def __init__(self) -> None:
        self._models: dict[str, ModelInputs] = {}

    async def get(self, http: httpx.AsyncClient, base_url: str, model_path: str,
                  model: str) -> ModelInputs | None:
        """The inputs of the model at `model_path` ("/v2/models/M[/versions/V]"); None when its
        config cannot be read now."""
        if model_path not in self._models:
            try:
                r = await http.get(f"{base_url}{model_path}/config", timeout=10.0)
            except httpx.HTTPError:
                return None
            if r.status_code != 200:
                return None
            self._models[model_path] = ModelInputs.from_config(model, r.json())
        return self._models[model_path]

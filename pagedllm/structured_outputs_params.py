"""What a request's output must look like: `SamplingParams.structured_outputs`, with vLLM's names.

Exactly one constraint per request: `json` (a JSON Schema), `regex`, `choice` (one of the
strings), `grammar` (EBNF, GBNF-style as xgrammar reads it) or `json_object` (any JSON object).
This file only checks the shape of the request; whether the schema, regex or grammar itself is
valid (and enforceable) is decided when the engine compiles it (structured_outputs.py), before
the request is queued. Pure Python: the Triton adapter and the OpenAI service import it without
torch or the grammar library.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """One output constraint (vLLM's `StructuredOutputsParams`; set exactly one of the first five).

    Attributes:
        json: a JSON Schema, as a dict or its JSON text: the output is one JSON value valid
            against it.
        regex: the whole output matches this regular expression.
        choice: the output is exactly one of these strings.
        grammar: the output is a sentence of this EBNF grammar (rule `root` starts it).
        json_object: the output is a JSON object (any keys and values).
        disable_any_whitespace: JSON output without free whitespace (one space after `:` and
            `,`, none elsewhere outside strings). True by default, unlike vLLM: a grammar that
            allows any whitespace lets a model that has drifted write spaces until max_tokens
            runs out, and the output is then cut mid-JSON. False allows what JSON allows.
    """

    json: str | dict | bool | None = None
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = True

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured_outputs must set exactly one of "
                             f"{', '.join(KINDS)}; got {given or 'none'}")
        if self.json is not None:
            if isinstance(self.json, str):
                try:
                    parsed = json.loads(self.json)
                except json.JSONDecodeError as e:
                    raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from None
            else:
                parsed = self.json
            if not isinstance(parsed, (dict, bool)):
                raise ValueError("structured_outputs.json must be a JSON Schema (an object), "
                                 f"got {type(parsed).__name__}")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, "
                                 f"got {value!r}")
        if self.choice is not None:
            if (not isinstance(self.choice, (list, tuple)) or not self.choice
                    or not all(isinstance(c, str) and c for c in self.choice)):
                raise ValueError("structured_outputs.choice must be a non-empty list of "
                                 f"non-empty strings, got {self.choice!r}")
            object.__setattr__(self, "choice", tuple(self.choice))
        if self.json_object is not None and not isinstance(self.json_object, bool):
            raise ValueError(f"structured_outputs.json_object must be a bool, "
                             f"got {self.json_object!r}")
        if not isinstance(self.disable_any_whitespace, bool):
            raise ValueError("structured_outputs.disable_any_whitespace must be a bool, "
                             f"got {self.disable_any_whitespace!r}")

    @property
    def kind(self) -> str:
        """Which constraint is set: one of KINDS."""
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def key(self) -> tuple:
        """What the compiled grammar depends on (the compile cache's key)."""
        value = getattr(self, self.kind)
        if self.kind == "json" and not isinstance(value, str):
            value = json.dumps(value, sort_keys=True)
        return (self.kind, value, self.disable_any_whitespace)

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, as JSON (what `from_json` reads back)."""
        out = {self.kind: list(self.choice) if self.kind == "choice" else getattr(self, self.kind)}
        if not self.disable_any_whitespace:
            out["disable_any_whitespace"] = False
        return out

    @classmethod
    def from_json(cls, data: Any) -> StructuredOutputsParams:
        """From a JSON object with these field names (Triton's `sampling_parameters`).

        Raises:
            ValueError: not an object, an unknown key, or a bad value (named).
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ValueError("structured_outputs must be a JSON object, "
                             f"got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown structured_outputs field {unknown[0]!r}; "
                             f"known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if v is not None})

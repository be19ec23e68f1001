"""`response_format` and vLLM's `structured_outputs` extra body -> the engine's structured_outputs.

    {"type": "text"}                                   no constraint
    {"type": "json_object"}                            {"json_object": true}
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
                                                       {"json": schema}
    "structured_outputs": {"json" | "regex" | "choice" | "grammar" | "json_object": ...}
                                                       as it is (vLLM's names)

The engine enforces the constraint whatever `strict` says (a strict: false schema is enforced
too). Only the shape is checked here (this service imports nothing of the engine); the engine
checks the rest, and compiles the schema, regex or grammar before the request runs: its error
comes back naming `structured_outputs.<kind>`, which `renames` maps to the field this request
used.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pagedllm_openai.errors import bad_request

# The engine's StructuredOutputsParams fields (pagedllm/structured_outputs_params.py).
KINDS = ("json", "regex", "choice", "grammar", "json_object")
OPTIONS = ("disable_any_whitespace",)


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] | bool = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: text, json_object, or json_schema (with `json_schema` then)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def structured_outputs(response_format: ResponseFormat | None,
                       extra: dict[str, Any] | None) -> tuple[dict | None, dict[str, str]]:
    """The engine's structured_outputs for a request (None: unconstrained), and the renames of
    the engine's field names to this request's, for error messages.

    Raises:
        OpenAIError: 400 naming the field, for a malformed or doubly given constraint.
    """
    if extra is not None:
        if response_format is not None and response_format.type != "text":
            raise bad_request("give either response_format or structured_outputs, not both",
                              "structured_outputs")
        unknown = sorted(set(extra) - set(KINDS) - set(OPTIONS))
        if unknown:
            raise bad_request(f"unknown structured_outputs field {unknown[0]!r}; known: "
                              f"{', '.join(KINDS + OPTIONS)}", "structured_outputs")
        given = [k for k in KINDS if extra.get(k) not in (None, False)]
        if len(given) != 1:
            raise bad_request(f"structured_outputs must set exactly one of {', '.join(KINDS)}; "
                              f"got {given or 'none'}", "structured_outputs")
        return dict(extra), {"structured_outputs": "structured_outputs"}
    if response_format is None or response_format.type == "text":
        return None, {}
    if response_format.type == "json_object":
        return {"json_object": True}, {"structured_outputs.json_object": "response_format"}
    if response_format.json_schema is None:
        raise bad_request("response_format of type json_schema needs its json_schema",
                          "response_format.json_schema")
    return ({"json": response_format.json_schema.json_schema},
            {"structured_outputs.json": "response_format.json_schema.schema"})

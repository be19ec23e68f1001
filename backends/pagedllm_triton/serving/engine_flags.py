"""Every EngineConfig field as a `pagedllm serve` flag, generated, so a new field gets its flag.

The flag is the field's name with dashes (`max_num_seqs` -> `--max-num-seqs`: vLLM's spelling,
since EngineConfig follows vLLM's names); its help is the field's entry in EngineConfig's
docstring; the default it shows is what a server runs with (engine_defaults.SERVER_DEFAULTS
over EngineConfig's own). Booleans get `--name/--no-name`. A flag left out is left out of the
engine settings, so ENGINE_ARGS (JSON) can still set that field; a flag given wins over it.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm_triton.serving.engine_defaults import SERVER_DEFAULTS

# vLLM's flags whose field has another name here (their flag -> our field).
VLLM_ALIASES = {"num_kv_blocks": ("--num-gpu-blocks-override",)}
# vLLM's --dtype values; "auto" is our None (float32 on CPU, bfloat16 on CUDA).
DTYPE_VALUES = {"auto": None, "float32": "float32", "float": "float32", "bfloat16": "bfloat16",
                "float16": "float16", "half": "float16"}
NOT_FLAGS = ("model",)  # the positional MODEL


@dataclass(frozen=True)
class EngineField:
    """One EngineConfig field as the command line sees it."""

    name: str
    kind: type            # int, float, str or bool
    optional: bool        # None is a valid value
    default: Any          # what a server runs with when nobody sets it
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _docstring_help() -> dict[str, str]:
    """{field: its text} from the `Attributes:` section of EngineConfig's docstring."""
    doc = inspect.cleandoc(EngineConfig.__doc__ or "")
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    helps: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            helps[name] = entry.group(2).strip()
        elif name and line.startswith("        "):
            helps[name] += " " + line.strip()
        elif line.strip():
            name = None
    return helps


def _kind(hint: Any) -> tuple[type, bool]:
    """(the base type, whether None is allowed) of a field's type hint."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def engine_fields() -> list[EngineField]:
    """The settable EngineConfig fields, in their declaration order."""
    hints = typing.get_type_hints(EngineConfig)
    helps = _docstring_help()
    fields = []
    for f in dataclasses.fields(EngineConfig):
        if f.name in NOT_FLAGS:
            continue
        kind, optional = _kind(hints[f.name])
        default = SERVER_DEFAULTS.get(f.name, f.default)
        fields.append(EngineField(f.name, kind, optional, default, helps.get(f.name, "")))
    return fields


def _dtype(value: str) -> str | None:
    if value not in DTYPE_VALUES:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a dtype; choose from {', '.join(DTYPE_VALUES)}")
    return DTYPE_VALUES[value] or "auto"  # "auto" -> None in engine_settings()


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per engine field (dest `engine.<field>`, default None: not given)."""
    group = parser.add_argument_group(
        "engine settings (EngineConfig; also settable as ENGINE_ARGS JSON, which flags override)")
    for f in engine_fields():
        shown = "auto" if f.name == "dtype" and f.default is None else f.default
        text = f"{f.help} (default: {shown})".replace("%", "%%")
        names = [f.flag, *VLLM_ALIASES.get(f.name, ())]
        dest = f"engine.{f.name}"
        if f.kind is bool:
            parser_action = argparse.BooleanOptionalAction
            group.add_argument(*names, dest=dest, action=parser_action, default=None, help=text)
        elif f.name == "dtype":
            group.add_argument(*names, dest=dest, type=_dtype, default=None, help=text,
                               metavar="{" + ",".join(DTYPE_VALUES) + "}")
        else:
            group.add_argument(*names, dest=dest, type=f.kind, default=None, help=text,
                               metavar=f.name.upper())


def given_engine_flags(namespace: argparse.Namespace) -> dict[str, Any]:
    """{field: value} of the engine flags given on the command line."""
    settings = {}
    for f in engine_fields():
        value = getattr(namespace, f"engine.{f.name}", None)
        if value is not None:
            settings[f.name] = None if f.name == "dtype" and value == "auto" else value
    return settings


def check_type(field: EngineField, value: Any) -> str | None:
    """Why `value` cannot be `field`'s (a JSON value, say), or None when it can."""
    if value is None:
        return None if field.optional else f"{field.name} must not be null"
    if field.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, field.kind) and (field.kind is bool or not isinstance(value, bool)):
        return None
    return f"{field.name} must be {'a' if field.kind is not int else 'an'} " \
           f"{field.kind.__name__}{' or null' if field.optional else ''}, got {value!r}"

"""The `llm` adapter's own settings, read from its config.pbtxt `parameters` (fake pb_utils)."""
from __future__ import annotations

import importlib

import pytest

import fake_pb_utils


def _adapter():
    fake_pb_utils.install()
    return importlib.import_module("pagedllm_triton.llm_model")


ADAPTER = _adapter()


def _config(value: str | None) -> dict:
    return {} if value is None else {
        "parameters": {"engine_process": {"string_value": value}}}


@pytest.mark.parametrize("value, expected", [(None, True), ("true", True), ("false", False),
                                             (" False ", False), ("TRUE", True)])
def test_engine_process_flag(value, expected):
    assert ADAPTER._flag(_config(value), "engine_process", True) is expected


@pytest.mark.parametrize("value", ["", "yes", "0", "flase"])
def test_a_bad_flag_names_the_parameter(value):
    with pytest.raises(ValueError, match="engine_process.*\"true\" or \"false\""):
        ADAPTER._flag(_config(value), "engine_process", True)


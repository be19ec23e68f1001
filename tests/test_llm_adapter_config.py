"""The `llm` adapter's own settings, read from its config.pbtxt `parameters` (fake pb_utils)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import fake_pb_utils

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "backends"))  # the adapter imports stub_watchdog
import config_edit  # noqa: E402


def _adapter():
    fake_pb_utils.install()
    spec = importlib.util.spec_from_file_location(
        "pagedllm_adapter_model", ROOT / "backends" / "pagedllm" / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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


def test_set_parameter_edits_only_that_entry(tmp_path):
    cfg = tmp_path / "config.pbtxt"
    original = (ROOT / "model_repository" / "llm" / "config.pbtxt").read_text()
    cfg.write_text(original)
    config_edit.set_parameter(cfg, "engine_process", "false")
    edited = cfg.read_text()
    assert 'parameters { key: "engine_process" value: { string_value: "false" } }' in edited
    assert edited.replace('"false" } }', '"true" } }') == original
    with pytest.raises(ValueError, match="no parameter 'cpu_threads'"):
        config_edit.set_parameter(cfg, "cpu_threads", "2")

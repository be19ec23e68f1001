"""Triton configs through protobuf: the committed configs parse, edits keep everything else."""
from __future__ import annotations

import shutil

import pytest
from google.protobuf import text_format

from pagedllm_tools import ROOT
from pagedllm_triton.serving import model_configs

MODELS = ("ensemble", "llm", "preprocessing", "postprocessing")


@pytest.mark.parametrize("model", MODELS)
def test_committed_configs_parse_as_triton_model_configs(model):
    config = model_configs.load(ROOT / "model_repository" / model / "config.pbtxt")
    assert config.name == model and config.input and config.output


def test_the_step_fed_by_llm_responses_does_not_batch():
    """With a dynamic batcher here, bursts of ensemble streams abort tritonserver 2.51 (heap
    corruption in the batcher: docs/reliability.md); the live overload test catches it only
    sometimes, so the config itself is checked too."""
    config = model_configs.load(ROOT / "model_repository" / "postprocessing" / "config.pbtxt")
    assert not config.HasField("dynamic_batching"), "see docs/reliability.md before batching here"


def test_a_config_that_is_not_a_model_config_is_refused(tmp_path):
    (tmp_path / "config.pbtxt").write_text('name: "x"\nmax_batch_sise: 4\n')
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        model_configs.load(tmp_path / "config.pbtxt")


def test_set_parameter_changes_one_entry(tmp_path):
    path = tmp_path / "config.pbtxt"
    shutil.copy(ROOT / "model_repository" / "llm" / "config.pbtxt", path)
    before = model_configs.load(path)
    model_configs.set_parameter(path, "engine_process", "false")
    after = model_configs.load(path)
    assert after.parameters["engine_process"].string_value == "false"
    after.parameters["engine_process"].string_value = before.parameters["engine_process"].string_value
    assert after == before


def test_strip_dynamic_batching_keeps_the_rest(tmp_path):
    path = tmp_path / "config.pbtxt"
    shutil.copy(ROOT / "model_repository" / "preprocessing" / "config.pbtxt", path)
    before = model_configs.load(path)
    assert before.HasField("dynamic_batching")
    model_configs.strip_dynamic_batching(path)
    after = model_configs.load(path)
    assert not after.HasField("dynamic_batching")
    after.dynamic_batching.CopyFrom(before.dynamic_batching)
    assert after == before


def test_instances_follow_the_cpu_count():
    counts = [model_configs.postprocessing_instances(c) for c in (1, 2, 4, 8, 16, 64)]
    assert counts == [1, 1, 1, 2, 4, 4]


def test_host_config_written_only_where_more_instances_are_wanted(tmp_path):
    shutil.copytree(ROOT / "model_repository" / "postprocessing", tmp_path / "postprocessing",
                    ignore=shutil.ignore_patterns("1", "configs"))
    committed_text = (tmp_path / "postprocessing" / "config.pbtxt").read_text()
    committed = model_configs.load(tmp_path / "postprocessing" / "config.pbtxt")
    host = tmp_path / "postprocessing" / "configs" / "host.pbtxt"

    model_configs.write_host_configs(tmp_path, 4)
    written = model_configs.load(host)
    assert written.instance_group[0].count == 4
    written.instance_group[0].count = 1
    assert written == committed
    assert (tmp_path / "postprocessing" / "config.pbtxt").read_text() == committed_text

    model_configs.write_host_configs(tmp_path, 1)
    assert not host.exists()

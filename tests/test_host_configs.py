"""host_configs: per-machine postprocessing instances, beside the committed config."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import host_configs  # noqa: E402


def test_instances_follow_the_cpu_count():
    assert [host_configs.postprocessing_instances(c) for c in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]


def test_host_config_written_only_where_more_instances_are_wanted(tmp_path):
    shutil.copytree(ROOT / "model_repository" / "postprocessing", tmp_path / "postprocessing",
                    ignore=shutil.ignore_patterns("1", "configs"))
    committed = (tmp_path / "postprocessing" / "config.pbtxt").read_text()
    host = tmp_path / "postprocessing" / "configs" / "host.pbtxt"

    host_configs.write_host_configs(tmp_path, 4)
    text = host.read_text()
    assert "instance_group [ { count: 4 kind: KIND_CPU } ]" in text
    assert text.replace("count: 4 kind", "count: 1 kind").endswith(committed)
    assert (tmp_path / "postprocessing" / "config.pbtxt").read_text() == committed

    host_configs.write_host_configs(tmp_path, 1)
    assert not host.exists()

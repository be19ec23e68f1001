"""Triton model configs (config.pbtxt) read and written through protobuf, never by text edits.

`load` parses a config.pbtxt into Triton's own `ModelConfig` message (tritonclient's
model_config_pb2, the schema the server parses with), `save` writes one back. The committed
configs keep their comments: tools write changed configs into a copy of the repository or into
`<model>/configs/<name>.pbtxt` beside the committed file, never over it.

Also the per-machine configs: more `postprocessing` instances where there are CPUs for them.
"""
from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig


def load(path: Path) -> ModelConfig:
    """Parses a config.pbtxt (raises google.protobuf.text_format.ParseError naming the line)."""
    return text_format.Parse(Path(path).read_text(), ModelConfig())


def save(config: ModelConfig, path: Path, header: str = "") -> None:
    """Writes `config` as pbtxt, after `header` (comment lines, each starting with '#')."""
    Path(path).write_text(header + text_format.MessageToString(config))


def set_parameter(path: Path, key: str, value: str) -> None:
    """Sets `parameters { key: KEY value: { string_value: VALUE } }` in the config file at `path`.

    For copies of the repository (tests, benchmarks): the file is rewritten without comments.
    """
    config = load(path)
    config.parameters[key].string_value = value
    save(config, path)


def strip_dynamic_batching(path: Path) -> None:
    """Removes the `dynamic_batching` block of the config at `path` (everything else stays)."""
    config = load(path)
    config.ClearField("dynamic_batching")
    save(config, path)


def postprocessing_instances(cpus: int | None = None) -> int:
    """Instances of `postprocessing` for a machine with `cpus` CPUs: cpus // 4, within 1..4.

    Streaming makes one postprocessing request per token. On the 16-core H200 host at
    concurrency 64 one instance fell behind (queue 6.7 s, TTFT p50 4.1 s, 3,609 output tok/s)
    and four kept up (queue 0.05 ms, TTFT p50 53 ms, 9,856 tok/s); on this 2-core machine four
    instances cost more than they gave (concurrency 32: 379-434 vs 449-492 tok/s).
    """
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, min(4, cpus // 4))


def write_host_configs(repo: Path, post_instances: int | None = None) -> None:
    """Writes postprocessing/configs/host.pbtxt when this machine wants more than one instance.

    The committed config.pbtxt (one instance) stays as it is; tritonserver started with
    `--model-config-name=host` (as pagedllm_triton.serving.tritonserver starts it) loads the host
    file where there is one and config.pbtxt elsewhere.
    """
    count = post_instances or postprocessing_instances()
    host = repo / "postprocessing" / "configs" / "host.pbtxt"
    if count == 1:
        host.unlink(missing_ok=True)
        return
    config = load(repo / "postprocessing" / "config.pbtxt")
    if len(config.instance_group) != 1:
        raise ValueError("postprocessing/config.pbtxt: expected one instance_group")
    config.instance_group[0].count = count
    host.parent.mkdir(exist_ok=True)
    save(config, host, f"# Written by pagedllm_triton.serving.model_configs for this machine "
                       f"({len(os.sched_getaffinity(0))} CPUs): {count} instances.\n")

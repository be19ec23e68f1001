"""Per-machine Triton configs: more `postprocessing` instances where there are CPUs for them.

The committed config.pbtxt files suit the 2-core machine the tests run on. Where a machine
wants other instance counts this writes `<model>/configs/host.pbtxt` (git-ignored) beside them;
tritonserver started with `--model-config-name=host` (scripts/serve.py does) loads that file
where it exists and config.pbtxt elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path


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

    The committed config.pbtxt (one instance) stays as it is; `--model-config-name=host` (as
    scripts/serve.py starts tritonserver) uses the host file where there is one.
    """
    count = post_instances or postprocessing_instances()
    host = repo / "postprocessing" / "configs" / "host.pbtxt"
    if count == 1:
        host.unlink(missing_ok=True)
        return
    text = (repo / "postprocessing" / "config.pbtxt").read_text()
    if "count: 1 kind" not in text:
        raise ValueError("postprocessing/config.pbtxt: expected an instance group 'count: 1 kind'")
    host.parent.mkdir(exist_ok=True)
    host.write_text(f"# Written by scripts/host_configs.py for this machine "
                    f"({len(os.sched_getaffinity(0))} CPUs): {count} instances.\n"
                    + text.replace("count: 1 kind", f"count: {count} kind"))

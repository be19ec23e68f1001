"""shm_regions.remove_orphans: only regions no process maps, created before the cut-off, go."""
from __future__ import annotations

import mmap
import os
import time

from pagedllm_triton.serving import shm_regions


def _region(directory, name: str) -> "os.PathLike":
    path = directory / name
    path.write_bytes(b"\0" * 4096)
    return path


def test_only_unmapped_regions_from_before_the_cut_off_are_removed(tmp_path):
    orphan = _region(tmp_path, "triton_python_backend_shm_region_dead-1")
    in_use = _region(tmp_path, "triton_pagedllm_backend_shm_region_live-2")
    other = _region(tmp_path, "not_a_triton_region")
    with open(in_use, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mapped:
        assert "triton_pagedllm_backend_shm_region_live-2" in shm_regions.mapped_regions()
        time.sleep(0.05)
        cut = time.time()
        time.sleep(0.05)
        newer = _region(tmp_path, "triton_onnxruntime_backend_shm_region_new-3")
        removed = shm_regions.remove_orphans(before=cut, shm=tmp_path)
        assert mapped[0] == 0
    assert removed == ["triton_python_backend_shm_region_dead-1"]
    assert not orphan.exists() and in_use.exists() and newer.exists() and other.exists()

"""Removes the /dev/shm regions a dead tritonserver left behind.

Each Python-based backend stub shares a 1 MiB+ region with its server
(`/dev/shm/triton_<backend>_backend_shm_region_<uuid>`). A server killed by a signal never
unlinks them, and tmpfs memory stays used until someone does; a crash loop fills /dev/shm (a
container's is often 64 MB). make serve calls this before it starts a dead server again.

A region is removed only when no process maps it (its stub and server are gone) and it was
created before `before` (so a region another server on this host is just creating, not yet
mapped, is left alone).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

REGION = re.compile(r"triton_\w+_backend_shm_region_[\w-]+")


def mapped_regions(proc: Path = Path("/proc")) -> set[str]:
    """Names of the /dev/shm regions some process maps now."""
    names: set[str] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        names.update(m.group(0) for m in REGION.finditer(text))
    return names


def remove_orphans(before: float, shm: Path = Path("/dev/shm")) -> list[str]:
    """Unlinks the unmapped regions created before `before` (a time.time()); their names."""
    candidates = []
    for path in shm.glob("triton_*_backend_shm_region_*"):
        try:
            if REGION.fullmatch(path.name) and path.stat().st_ctime < before:
                candidates.append(path)
        except OSError:
            continue
    if not candidates:
        return []
    mapped = mapped_regions()
    removed = []
    for path in candidates:
        if path.name not in mapped:
            try:
                os.unlink(path)
                removed.append(path.name)
            except OSError:
                pass
    return removed

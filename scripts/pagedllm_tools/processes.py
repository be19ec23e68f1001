"""The process tree below a pid, read from /proc (Linux): for the soak and the tests that
check no process is left behind."""
from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every process below `pid` (not `pid` itself)."""
    parents, cmds = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parents[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
                cmds[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    found, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier and p not in found}
        found.update({p: cmds[p] for p in frontier})
    return found

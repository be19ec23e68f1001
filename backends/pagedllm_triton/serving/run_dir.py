"""A server's own directory: its model repository, built at each start, under a lock.

Two servers must never share a model repository: tritonserver reads llm/engine.json again each
time `llm` loads (the watchdog's reloads, a restarted tritonserver), so a second server writing
there would silently swap the first one's model. So each server writes only under its run
directory: the one --run-dir names (kept after exit, to see what was served) or a new temporary
one (removed at exit). A lock file marks a run directory in use; the committed templates (a
checkout's model_repository/) are never one.

    RUN_DIR/serve.lock          flock'ed while a server runs; holds its pid
    RUN_DIR/model_repository/   rebuilt at each start (repository.py)
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pagedllm_triton.serving.errors import SettingError
from pagedllm_triton.serving.paths import template_repository

LOCK = "serve.lock"


@dataclass
class RunDir:
    """An open run directory; `close()` releases it (and removes a temporary one)."""

    path: Path
    temporary: bool
    lock: IO

    @property
    def repository(self) -> Path:
        return self.path / "model_repository"

    def close(self) -> None:
        self.lock.close()  # NOTE: closing the file releases the flock
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)


def open_run_dir(path: Path | None) -> RunDir:
    """Takes `path` (created if missing) or a new temporary directory for one server, with an
    empty model_repository/ in it.

    Raises:
        SettingError: `path` is the templates or inside them, is in use by another server, or
            holds a model_repository/ that no pagedllm server wrote.
    """
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="pagedllm-run-"))
        return RunDir(path, True, _lock(path, "a temporary run directory"))
    path = path.expanduser().resolve()
    templates = template_repository().resolve()
    if path == templates.parent or path.is_relative_to(templates):
        raise SettingError(f"--run-dir {path}: that is where the committed model_repository "
                           "templates live; choose a directory of this server's own")
    if path.exists() and not path.is_dir():
        raise SettingError(f"--run-dir {path}: not a directory")
    if (path / "model_repository").exists() and not (path / LOCK).exists():
        raise SettingError(f"--run-dir {path}: holds a model_repository/ that pagedllm did not "
                           "write; choose an empty directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingError(f"--run-dir {path}: cannot create it ({e.strerror})") from None
    run = RunDir(path, False, _lock(path, f"--run-dir {path}"))
    shutil.rmtree(run.repository, ignore_errors=True)  # a previous run's: nothing stale stays
    return run


def _lock(path: Path, name: str) -> IO:
    lock = open(path / LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        lock.close()
        raise SettingError(f"{name} is in use by another server (pid {owner}); give each server "
                           "its own --run-dir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock

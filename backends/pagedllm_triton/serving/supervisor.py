"""Keeps one child process of `make serve` running: started again when it dies, within bounds.

tritonserver 2.51 can abort on its own (a heap corruption under load: docs/reliability.md), and
the front door is a process of its own too. A service that stops for good on the first crash is
an outage until a person notices; one that restarts forever hides a crash loop. So each child
gets at most `max_restarts` restarts in `window` seconds, `backoff` seconds apart (doubling, up to
`max_backoff`); past that, `restart()` says no and `make serve` exits non-zero for a person (or
the container's restart policy) to take over.
"""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger("pagedllm.serve")


@dataclass
class Supervised:
    """One child: `start()` launches it (and may wait until it is ready) and returns the process.

    Args:
        name: for the log.
        start: launches the process; called again for each restart.
        max_restarts, window: at most this many restarts in `window` seconds.
        backoff, max_backoff: seconds before the first restart of a run of failures, doubling.
    """

    name: str
    start: Callable[[], subprocess.Popen]
    max_restarts: int = 5
    window: float = 600.0
    backoff: float = 1.0
    max_backoff: float = 30.0
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic time of each restart

    def launch(self) -> subprocess.Popen:
        self.process = self.start()
        return self.process

    def died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def restart(self, stopping: threading.Event) -> bool:
        """Starts the dead child again after its backoff; False when it is out of restarts (or
        a stop was asked while waiting)."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.window]
        code = self.process.returncode if self.process is not None else None
        if len(self.restarts) >= self.max_restarts:
            logger.error("%s exited (code %s) after %d restarts in %.0f s: giving up", self.name,
                         code, len(self.restarts), self.window)
            return False
        delay = min(self.max_backoff, self.backoff * 2 ** len(self.restarts))
        logger.error("%s exited (code %s): starting it again in %.0f s (restart %d of at most "
                     "%d in %.0f s)", self.name, code, delay, len(self.restarts) + 1,
                     self.max_restarts, self.window)
        if stopping.wait(delay):
            return False
        self.restarts.append(time.monotonic())
        self.launch()
        return True

"""Ends a Triton Python-backend stub whose tritonserver is gone.

Seen with tritonserver 2.51: a server stopped or killed mid-stream left stubs running — the
`llm` stub for an hour, blocked in a metrics call to the dead server, and `postprocessing` stubs
caught mid-request — each holding its memory (and the llm's, its engine process).
"""
from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger(__name__)


def exit_with_server(poll_s: float = 0.5) -> bool:
    """Watches, on a daemon thread, for this process's parent (the server) to change; then exits.

    Arms only under a tritonserver parent (so unit tests that load a model.py are left alone);
    returns whether it did.
    """
    server_pid = os.getppid()
    try:
        with open(f"/proc/{server_pid}/comm") as f:
            if not f.read().startswith("tritonserver"):
                return False
    except OSError:
        return False

    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(poll_s)
        logger.error("tritonserver (pid %d) is gone; this stub exits", server_pid)
        os._exit(1)

    threading.Thread(target=watch, name="stub-watchdog", daemon=True).start()
    return True

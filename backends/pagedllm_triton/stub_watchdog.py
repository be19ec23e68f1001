"""Ends a Triton Python-backend stub whose tritonserver is gone.

Seen with tritonserver 2.51: a server stopped or killed mid-stream left stubs running — the
`llm` stub for an hour, blocked in a metrics call to the dead server, and `postprocessing` stubs
caught mid-request — each holding its memory (and the llm's, its engine process).

The watcher is a small shell process, not a thread: a stub caught mid-request blocks in the
stub's C++ loop holding the GIL, and a Python thread waiting for the GIL never gets to act
(seen: the thread parked in time.sleep's GIL wait while the orphan lived on).
"""
from __future__ import annotations

import os
import subprocess

# $1 stub pid, $2 server pid, $3 poll seconds. Shell builtins read the stub's parent, so each
# turn forks only `sleep`. A stub that ends by itself (gone, or a zombie) ends the watcher.
_WATCH = """
while :; do
    parent=
    while read -r key value; do
        [ "$key" = State: ] && [ "${value%% *}" = Z ] && exit 0
        [ "$key" = PPid: ] && { parent=$value; break; }
    done < /proc/$1/status || exit 0
    [ "$parent" = "$2" ] || break
    sleep "$3"
done
kill -9 "$1"
"""


def watcher_argv(stub_pid: int, server_pid: int, poll_s: float) -> list[str]:
    """The watcher's command: kill -9 `stub_pid` once its parent is no longer `server_pid`."""
    return ["sh", "-c", _WATCH, "pagedllm-stub-watchdog", str(stub_pid), str(server_pid),
            str(poll_s)]


def exit_with_server(poll_s: float = 0.5) -> bool:
    """Starts a watcher that kills this stub once its parent is no longer the server.

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
    # Its own session: a Ctrl-C to the server's process group must not take the watcher first.
    subprocess.Popen(watcher_argv(os.getpid(), server_pid, poll_s), stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return True

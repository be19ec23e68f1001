"""stub_watchdog: armed only under tritonserver; its watcher kills an orphaned stub and nothing
else (the live test in test_serving.py kills a real server to see it act)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pagedllm_triton.stub_watchdog import exit_with_server, watcher_argv
from polling import wait_until


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _server_with_stub() -> tuple[subprocess.Popen, int]:
    """A stand-in server process with one child (`sleep`), whose pid it prints; it reaps the
    child when that ends, as tritonserver does, and lives on."""
    code = ("import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            "print(p.pid, flush=True); p.wait(); time.sleep(60)")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return server, int(server.stdout.readline())


def test_not_armed_outside_tritonserver():
    assert exit_with_server() is False


def test_watcher_kills_the_stub_when_its_server_dies():
    server, stub = _server_with_stub()
    watcher = subprocess.Popen(watcher_argv(stub, server.pid, 0.05))
    try:
        assert not wait_until(lambda: watcher.poll() is not None, timeout=0.3)  # still watching
        server.kill()
        server.wait()
        assert wait_until(lambda: not _running(stub), timeout=5)
        assert watcher.wait(timeout=5) == 0
    finally:
        server.kill()
        watcher.kill()


def test_watcher_leaves_when_the_stub_ends_by_itself():
    server, stub = _server_with_stub()
    watcher = subprocess.Popen(watcher_argv(stub, server.pid, 0.05))
    try:
        subprocess.run(["kill", "-TERM", str(stub)], check=True)
        assert watcher.wait(timeout=5) == 0
        assert server.poll() is None  # nothing else was touched
    finally:
        server.kill()
        server.wait()
        watcher.kill()

"""stub_watchdog: armed only under tritonserver (the live test kills a server to see it act)."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

BACKENDS = Path(__file__).resolve().parent.parent / "backends"
sys.path.insert(0, str(BACKENDS))

from stub_watchdog import exit_with_server  # noqa: E402


def test_not_armed_outside_tritonserver():
    before = {t.name for t in threading.enumerate()}
    assert exit_with_server() is False
    assert "stub-watchdog" not in {t.name for t in threading.enumerate()} - before


def test_a_process_whose_parent_is_not_tritonserver_keeps_running():
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import stub_watchdog; "
            "print(stub_watchdog.exit_with_server(poll_s=0.01)); time.sleep(0.2); print('alive')")
    out = subprocess.run([sys.executable, "-c", code, str(BACKENDS)], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.split() == ["False", "alive"]

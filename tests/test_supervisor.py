"""make serve keeps its children running: the restart policy alone, then a killed tritonserver
under the real launcher (it comes back and serves the same greedy text through the front door)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pagedllm_tools.processes import descendants
from pagedllm_triton.serving import shm_regions
from pagedllm_triton.serving.supervisor import Supervised
from polling import wait_until

EXIT_3 = [sys.executable, "-c", "import sys; sys.exit(3)"]


def test_a_dead_child_is_started_again_until_its_restarts_run_out():
    started = []

    def start():
        started.append(time.monotonic())
        return subprocess.Popen(EXIT_3)

    child = Supervised("toy", start, max_restarts=2, window=60, backoff=0.05)
    child.launch()
    child.process.wait()
    assert child.died()
    stopping = threading.Event()
    assert child.restart(stopping) and child.restart(stopping)
    assert len(started) == 3 and len(child.restarts) == 2
    assert started[1] - started[0] >= 0.05 and started[2] - started[1] >= 0.1  # doubling
    assert not child.restart(stopping), "a third restart within the window"
    assert len(started) == 3


def test_restarts_older_than_the_window_no_longer_count():
    child = Supervised("toy", lambda: subprocess.Popen(EXIT_3), max_restarts=1, window=0.2,
                       backoff=0.01)
    child.launch()
    assert child.restart(threading.Event())
    time.sleep(0.3)
    assert child.restart(threading.Event())


def test_a_stop_while_waiting_starts_nothing():
    started = []
    child = Supervised("toy", lambda: started.append(1) or subprocess.Popen(EXIT_3), backoff=5)
    child.launch()
    stopping = threading.Event()
    threading.Timer(0.1, stopping.set).start()
    t0 = time.monotonic()
    assert not child.restart(stopping)
    assert time.monotonic() - t0 < 2 and started == [1]


# ---- live: make serve's launcher, a killed tritonserver ------------------------------------------

pytest.importorskip("tritonclient.grpc")
openai = pytest.importorskip("openai")

from live_server import DEFAULT_MODEL, ENGINE_ARGS  # noqa: E402
from pagedllm_triton.serving.tritonserver import free_port  # noqa: E402


def _servers(serve: subprocess.Popen) -> list[int]:
    return [p for p, cmd in descendants(serve.pid).items()
            if os.path.basename(cmd.split(" ")[0]) == "tritonserver"]


def test_make_serve_starts_a_dead_tritonserver_again(tmp_path):
    ports = {flag: free_port() for flag in ("--http-port", "--grpc-port", "--metrics-port",
                                            "--openai-port", "--triton-http-port")}
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(
        [sys.executable, "-m", "pagedllm_triton.serving.serve", str(DEFAULT_MODEL),
         "--engine-args", json.dumps(ENGINE_ARGS),
         *[str(x) for kv in ports.items() for x in kv]],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['--openai-port']}/v1"
    client = openai.OpenAI(base_url=url, api_key="test", max_retries=0, timeout=60)

    def greedy() -> str | None:
        try:
            return client.completions.create(model="default", prompt="def fib(n):", max_tokens=12,
                                             temperature=0).choices[0].text
        except openai.OpenAIError:
            return None

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        assert wait_until(lambda: "ready:" in log.read_text(), timeout=180), log.read_text()
        assert wait_until(ready, timeout=30)
        expected = greedy()
        assert expected, log.read_text()[-3000:]
        [old] = _servers(serve)
        regions = shm_regions.REGION.findall(Path(f"/proc/{old}/maps").read_text())
        assert regions, "the server maps no stub region"
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: not ready(), timeout=10), "still ready with no tritonserver"
        t0 = time.monotonic()
        assert wait_until(lambda: ready() and greedy() == expected, timeout=120), \
            log.read_text()[-3000:]
        print(f"serving the same text again {time.monotonic() - t0:.1f} s after the kill")
        [new] = _servers(serve)
        assert new != old
        assert "tritonserver exited (code -9): starting it again" in log.read_text()
        assert not any(Path("/dev/shm", r).exists() for r in regions), "the dead one's regions"
        assert "removed" in log.read_text()
        assert serve.poll() is None
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            raise
    assert code == 0, log.read_text()[-3000:]
    assert wait_until(lambda: not Path(f"/proc/{new}").exists(), timeout=10), "left running"
    # one SIGTERM to the server (the first was SIGKILLed): make serve stops each child once
    assert log.read_text().count("Signal (15) received") == 1, log.read_text()[-3000:]

"""EngineProcess: what is its own (a child process, its death, its interpreter). The contract it
shares with EngineLoop is tested on both in test_engine_loop.py."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from polling import wait_until
from pagedllm import EngineConfig, EngineLoop, EngineProcess, LLMEngine, SamplingParams
from pagedllm.engine_process import python_executable

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def config(tiny_checkpoints) -> EngineConfig:
    return EngineConfig(model=tiny_checkpoints["llama"], num_kv_blocks=256, max_model_len=512,
                        device="cpu")


def test_runs_in_another_process_and_streams_like_the_thread_loop(config):
    prompts = {f"c{i}": [10 + i, 20, 30, 40 + i] for i in range(8)}
    results: dict[str, list] = {}

    def client(request_id: str) -> None:
        stream = process.submit(request_id, prompts[request_id], SamplingParams(max_tokens=12, **GREEDY))
        results[request_id] = list(stream)

    process = EngineProcess(config).start()
    threads = [threading.Thread(target=client, args=(rid,)) for rid in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert process._process.pid != os.getpid() and process._process.is_alive()

    loop = EngineLoop(LLMEngine(config)).start()
    try:
        for request_id, prompt in prompts.items():
            expected = list(loop.submit(request_id, prompt, SamplingParams(max_tokens=12, **GREEDY)))
            got = results[request_id]
            assert sum(d.finished for d in got) == 1 and got[-1].finished
            assert got[-1].finish_reason == "length" and got[-1].error is None
            assert [t for d in got for t in d.token_ids] == [t for d in expected for t in d.token_ids]
            assert "".join(d.text for d in got) == "".join(d.text for d in expected)
    finally:
        loop.shutdown()
    assert wait_until(lambda: process.stats().kv_cache_usage == 0.0)
    assert process.stats().num_generation_tokens >= 8 * 12
    process.shutdown()


def test_shutdown_finishes_live_requests(config):
    process = EngineProcess(config).start()
    stream = process.submit("x", [1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
    stream.get(timeout=30)
    process.shutdown()
    deltas = list(stream)
    assert deltas[-1].finished and "shutting down" in deltas[-1].error
    assert not process._process.is_alive()


def test_a_dead_child_fails_its_requests_and_refuses_new_ones(config):
    exits: list[str] = []
    process = EngineProcess(config, on_exit=exits.append).start()
    try:
        streams = [process.submit(f"r{i}", [1, 2, 3 + i], SamplingParams(max_tokens=2000, ignore_eos=True))
                   for i in range(3)]
        for stream in streams:
            stream.get(timeout=30)
        assert process.alive and process.stats().num_running == 3
        os.kill(process._process.pid, signal.SIGKILL)
        for stream in streams:
            last = list(stream)[-1]
            assert last.finished and "engine process exited" in last.error
            assert last.error_code == "unavailable"
        late = list(process.submit("late", [1, 2], SamplingParams(max_tokens=2)))
        assert len(late) == 1 and "engine process exited" in late[0].error
        assert wait_until(lambda: exits, timeout=5) and "exited" in exits[0]
        assert not process.alive and process.stats().num_running == 0  # no stale gauges
    finally:
        process.shutdown()


def test_a_stop_asked_for_is_not_an_unexpected_exit(config):
    exits: list[str] = []
    process = EngineProcess(config, on_exit=exits.append).start()
    process.shutdown()
    time.sleep(0.3)
    assert exits == [] and not process.alive


def test_a_failed_build_is_raised_by_start(tmp_path):
    with pytest.raises(RuntimeError, match="failed to start: .*no-such-model"):
        EngineProcess(EngineConfig(model=str(tmp_path / "no-such-model"), device="cpu")).start()


def test_python_executable_when_embedded(monkeypatch, tmp_path):
    """Inside Triton's stub sys.executable is the stub: the same version's python is used."""
    monkeypatch.delenv("PAGEDLLM_PYTHON", raising=False)
    assert python_executable() == sys.executable
    monkeypatch.setattr(sys, "executable", str(tmp_path / "triton_python_backend_stub"))
    found = python_executable()
    assert os.path.basename(found) == f"python{sys.version_info.major}.{sys.version_info.minor}"
    monkeypatch.setenv("PAGEDLLM_PYTHON", "/opt/python")
    assert python_executable() == "/opt/python"

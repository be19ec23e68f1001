"""EngineProcess: the EngineLoop in a spawned child, as the Triton adapter runs it."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from pagedllm import EngineConfig, EngineLoop, LLMEngine, SamplingParams
from pagedllm import EngineProcess
from pagedllm.engine_process import python_executable

GREEDY = dict(temperature=0, ignore_eos=True)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="module")
def config(tiny_checkpoints) -> EngineConfig:
    return EngineConfig(model=tiny_checkpoints["llama"], num_kv_blocks=256, max_model_len=512,
                        device="cpu")


@pytest.fixture(scope="module")
def process(config):
    process = EngineProcess(config).start()
    yield process
    process.shutdown()


def test_runs_in_another_process_and_streams_like_the_thread_loop(process, config):
    prompts = {f"c{i}": [10 + i, 20, 30, 40 + i] for i in range(8)}
    results: dict[str, list] = {}

    def client(request_id: str) -> None:
        stream = process.submit(request_id, prompts[request_id], SamplingParams(max_tokens=12, **GREEDY))
        results[request_id] = list(stream)

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


def test_bad_request_gets_its_own_error_and_others_finish(process):
    good = process.submit("good", [5, 6, 7], SamplingParams(max_tokens=30, **GREEDY))
    for prompt, word in (([], "empty"), ([3] * 600, "max_model_len"), ([99999], "prompt_token_ids")):
        deltas = list(process.submit(f"bad-{word}", prompt, SamplingParams(max_tokens=4)))
        assert len(deltas) == 1 and deltas[0].finished and word in deltas[0].error
    deltas = list(good)
    assert deltas[-1].finish_reason == "length" and deltas[-1].error is None
    assert sum(len(d.token_ids) for d in deltas) == 30


def test_duplicate_request_id_is_refused(process):
    first = process.submit("same", [1, 2, 3], SamplingParams(max_tokens=400, ignore_eos=True))
    first.get(timeout=30)
    second = list(process.submit("same", [1, 2, 3], SamplingParams(max_tokens=2)))
    assert len(second) == 1 and "already in use" in second[0].error
    process.abort("same")
    assert list(first)[-1].finish_reason == "abort"


def test_abort_mid_stream_frees_blocks_within_1s(process):
    stream = process.submit("long", [1, 2, 3, 4], SamplingParams(max_tokens=400, ignore_eos=True))
    assert not stream.get(timeout=30).finished
    assert wait_until(lambda: process.stats().kv_cache_usage > 0)
    process.abort("long")
    rest = list(stream)
    assert sum(d.finished for d in rest) == 1 and rest[-1].finish_reason == "abort"
    assert wait_until(lambda: process.stats().kv_cache_usage == 0.0, timeout=1.0)


def test_shutdown_finishes_live_requests(config):
    process = EngineProcess(config).start()
    stream = process.submit("x", [1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
    stream.get(timeout=30)
    process.shutdown()
    deltas = list(stream)
    assert deltas[-1].finished and "shutting down" in deltas[-1].error
    assert not process._process.is_alive()


def test_a_dead_child_fails_its_requests_and_refuses_new_ones(config):
    process = EngineProcess(config).start()
    try:
        streams = [process.submit(f"r{i}", [1, 2, 3 + i], SamplingParams(max_tokens=2000, ignore_eos=True))
                   for i in range(3)]
        for stream in streams:
            stream.get(timeout=30)
        os.kill(process._process.pid, signal.SIGKILL)
        for stream in streams:
            last = list(stream)[-1]
            assert last.finished and "engine process exited" in last.error
        late = list(process.submit("late", [1, 2], SamplingParams(max_tokens=2)))
        assert len(late) == 1 and "engine process exited" in late[0].error
    finally:
        process.shutdown()


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

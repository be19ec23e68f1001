"""EngineLoop (the engine on its own thread) and EngineProcess (that loop in a child process):
the contract both keep — streams end once, errors stay per request, aborts free blocks."""
from __future__ import annotations

import threading

import pytest

from polling import wait_until
from pagedllm import EngineConfig, EngineLoop, EngineProcess, LLMEngine, SamplingParams


@pytest.fixture(params=["thread", "process"])
def loop(request, tiny_checkpoints):
    """One contract, two homes: EngineLoop on a thread here, EngineProcess in a child."""
    config = EngineConfig(model=tiny_checkpoints["llama"], num_kv_blocks=256, max_model_len=512)
    loop = (EngineLoop(LLMEngine(config)) if request.param == "thread" else EngineProcess(config)).start()
    yield loop
    loop.shutdown()


def test_streams_from_many_threads_each_end_once(loop):
    results: dict[str, list] = {}

    def client(i: int) -> None:
        stream = loop.submit(f"c{i}", [10 + i, 20, 30, 40], SamplingParams(temperature=0, max_tokens=12,
                                                                             ignore_eos=True))
        results[f"c{i}"] = list(stream)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    for deltas in results.values():
        assert sum(d.finished for d in deltas) == 1 and deltas[-1].finished
        assert deltas[-1].finish_reason == "length" and deltas[-1].error is None
        assert sum(len(d.token_ids) for d in deltas) == 12
    assert wait_until(lambda: loop.stats().kv_cache_usage == 0.0)
    if isinstance(loop, EngineLoop):  # an EngineProcess's engine lives in its child
        assert loop.engine.requests == {}, "finished requests are released"


def test_bad_request_gets_its_own_error_and_others_finish(loop):
    good = loop.submit("good", [5, 6, 7], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    empty = loop.submit("empty", [], SamplingParams(max_tokens=4))
    too_long = loop.submit("long", [3] * 600, SamplingParams(max_tokens=4))
    bad_token = loop.submit("tok", [99999], SamplingParams(max_tokens=4))
    for stream, word in ((empty, "empty"), (too_long, "max_model_len"), (bad_token, "prompt_token_ids")):
        deltas = list(stream)
        assert len(deltas) == 1 and deltas[0].finished and word in deltas[0].error
    deltas = list(good)
    assert deltas[-1].finish_reason == "length" and deltas[-1].error is None
    assert sum(len(d.token_ids) for d in deltas) == 30


def test_duplicate_request_id_is_refused(loop):
    first = loop.submit("same", [1, 2, 3], SamplingParams(max_tokens=200, ignore_eos=True))
    first.get(timeout=30)
    second = list(loop.submit("same", [1, 2, 3], SamplingParams(max_tokens=2)))
    assert second[0].error and "already in use" in second[0].error
    loop.abort("same")
    assert list(first)[-1].finish_reason == "abort"


def test_abort_mid_stream_frees_blocks(loop):
    stream = loop.submit("long", [1, 2, 3, 4], SamplingParams(max_tokens=400, ignore_eos=True))
    first = stream.get(timeout=30)
    assert not first.finished
    assert loop.stats().kv_cache_usage > 0
    loop.abort("long")
    rest = list(stream)
    assert rest[-1].finished and rest[-1].finish_reason == "abort"
    assert sum(d.finished for d in rest) == 1
    assert wait_until(lambda: loop.stats().kv_cache_usage == 0.0, timeout=1.0)


def test_shutdown_finishes_live_requests(tiny_checkpoints):
    engine = LLMEngine(EngineConfig(model=tiny_checkpoints["llama"], num_kv_blocks=64))
    loop = EngineLoop(engine).start()
    stream = loop.submit("x", [1, 2, 3], SamplingParams(max_tokens=500, ignore_eos=True))
    stream.get(timeout=30)
    loop.shutdown()
    deltas = list(stream)
    assert deltas[-1].finished and deltas[-1].error
    assert engine.kv_cache.num_free_blocks == 64


def test_engine_built_on_the_loop_thread(tiny_checkpoints):
    """A factory builds the engine on the loop's thread; its error reaches start()'s caller."""
    built_on = []

    def build():
        built_on.append(threading.current_thread().name)
        return LLMEngine(EngineConfig(model=tiny_checkpoints["llama"], num_kv_blocks=64))

    loop = EngineLoop(build).start()
    try:
        assert built_on == ["pagedllm-engine"] and loop.engine is not None
        deltas = list(loop.submit("a", [5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True)))
        assert sum(len(d.token_ids) for d in deltas) == 3 and deltas[-1].finished
    finally:
        loop.shutdown()
    with pytest.raises(ValueError, match="block_size"):
        EngineLoop(lambda: LLMEngine(EngineConfig(model=tiny_checkpoints["llama"],
                                                  block_size=0))).start()

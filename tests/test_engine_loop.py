"""EngineLoop (the engine on its own thread) and EngineProcess (that loop in a child process):
the contract both keep — streams end once, errors stay per request, aborts free blocks."""
from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from polling import wait_until
from pagedllm import EngineConfig, EngineLoop, EngineProcess, LLMEngine, SamplingParams

_ids = itertools.count()
DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "models" / "default")


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


# ---- structured outputs: grammars compile beside the engine's thread -----------------------------


def _slow_schema(n: int = 400) -> dict:
    """A JSON schema whose grammar takes ~0.5 s to compile (n patterned string properties)."""
    props = {f"k{i}": {"type": "string", "pattern": f"[a-z]{{1,{i % 9 + 2}}}(x|y){{2,5}}[0-9]{{{i % 5 + 1},8}}"}
             for i in range(n)}
    return {"type": "object", "properties": props, "required": list(props)}


@pytest.fixture(params=["thread", "process"])
def grammar_loop(request):
    """A function that starts a loop whose grammars must compile within `timeout` seconds.

    NOTE: the default model, not a tiny checkpoint: a grammar needs the checkpoint's EOS to be
    its tokenizer's (the tiny configs keep transformers' default EOS id, a text token there).
    """
    loops = []

    def start(timeout: float = 30.0):
        config = EngineConfig(model=DEFAULT_MODEL, num_kv_blocks=256, max_model_len=512,
                              grammar_compile_timeout=timeout)
        loops.append((EngineLoop(LLMEngine(config)) if request.param == "thread"
                      else EngineProcess(config)).start())
        return loops[-1]

    yield start
    for loop in loops:
        loop.shutdown()


def test_plain_requests_run_while_a_grammar_compiles(grammar_loop):
    """The plain request ends before the constrained one's grammar is ready (it used to wait)."""
    grammar_loop = grammar_loop()
    plain_params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    slow = grammar_loop.submit("slow", [5, 6, 7], SamplingParams(
        max_tokens=4, structured_outputs={"json": _slow_schema()}))
    plain = grammar_loop.submit("plain", [5, 6, 7], plain_params)
    plain_deltas = list(plain)
    assert plain_deltas[-1].finish_reason == "length"
    with pytest.raises(Exception):  # queue.Empty: nothing of the slow request yet
        slow.get(timeout=0)
    slow_deltas = list(slow)
    assert sum(d.finished for d in slow_deltas) == 1 and slow_deltas[-1].error is None
    assert "".join(d.text for d in slow_deltas) == '{"k0'  # 4 tokens of the schema's only path
    assert wait_until(lambda: grammar_loop.stats().kv_cache_usage == 0.0)


def test_a_grammar_past_its_deadline_fails_its_request_alone(grammar_loop):
    grammar_loop = grammar_loop(timeout=0.05)
    slow = grammar_loop.submit("slow", [5, 6, 7], SamplingParams(
        max_tokens=4, structured_outputs={"json": _slow_schema()}))
    twin = grammar_loop.submit("twin", [5, 6, 7], SamplingParams(  # shares the compile
        max_tokens=4, structured_outputs={"json": _slow_schema()}))
    plain = grammar_loop.submit("plain", [5, 6, 7], SamplingParams(max_tokens=8, ignore_eos=True))
    for stream in (slow, twin):
        deltas = list(stream)
        assert len(deltas) == 1 and deltas[0].error_code == "invalid_argument"
        assert "structured_outputs.json did not compile within 0.05 s" in deltas[0].error
    assert list(plain)[-1].finish_reason == "length"
    # The compile ran on to its end and was cached: the same schema is now served at once.
    def served() -> bool:
        deltas = list(grammar_loop.submit(f"again{next(_ids)}", [5, 6, 7], SamplingParams(
            max_tokens=4, structured_outputs={"json": _slow_schema()})))
        return deltas[-1].error is None
    assert wait_until(served, timeout=60)
    assert wait_until(lambda: grammar_loop.stats().kv_cache_usage == 0.0)


def test_abort_and_errors_while_a_grammar_compiles(grammar_loop):
    """An abort of a request waiting for its grammar ends it once; a bad schema is its own error."""
    grammar_loop = grammar_loop()
    waiting = grammar_loop.submit("w", [5, 6, 7], SamplingParams(
        max_tokens=4, structured_outputs={"json": _slow_schema(401)}))
    grammar_loop.abort("w")
    deltas = list(waiting)
    assert len(deltas) == 1 and deltas[0].finish_reason == "abort" and deltas[0].error is None
    bad = list(grammar_loop.submit("bad", [5, 6, 7], SamplingParams(
        max_tokens=4, structured_outputs={"json": {"type": "bogus"}})))
    assert len(bad) == 1 and "structured_outputs.json is not valid" in bad[0].error
    again = list(grammar_loop.submit("w", [5, 6, 7], SamplingParams(max_tokens=2, ignore_eos=True)))
    assert again[-1].finish_reason == "length", "the aborted id is free again"

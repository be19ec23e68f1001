"""A background thread around LLMEngine, for servers: submit -> stream of deltas -> final; abort by id.

Only the loop thread touches the engine. Other threads talk to it through one command queue, and
hear back through per-request sinks (a callback, or the queue inside a RequestStream). Every
request gets exactly one delta with `finished=True`: its last, an error or an abort.

A structured-output request whose grammar is not cached waits for it beside the engine
(grammar_compiles.py): workers compile, the result comes back as a command, and the request is
added then; other requests keep stepping meanwhile.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from pagedllm.errors import OverloadedError
from pagedllm.grammar_compiles import Compiled, GrammarCompiles
from pagedllm.outputs import StreamDelta
from pagedllm.sampling_params import SamplingParams

if TYPE_CHECKING:  # NOTE: not at run time: EngineProcess's parent imports this without torch
    from pagedllm.engine import LLMEngine

logger = logging.getLogger(__name__)

Sink = Callable[[StreamDelta], None]


@dataclass
class LoopStats:
    """A snapshot of engine gauges and counters, updated after every step under one lock."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_steps: int = 0


class RequestStream:
    """The deltas of one request, as an iterator that ends after the finished delta."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: queue.SimpleQueue[StreamDelta] = queue.SimpleQueue()

    def put(self, delta: StreamDelta) -> None:
        self._queue.put(delta)

    def get(self, timeout: float | None = None) -> StreamDelta:
        """Next delta; raises queue.Empty after `timeout` seconds."""
        return self._queue.get(timeout=timeout)

    def __iter__(self) -> Iterator[StreamDelta]:
        while True:
            delta = self._queue.get()
            yield delta
            if delta.finished:
                return


@dataclass
class _Add:
    request_id: str
    prompt: str | Sequence[int]
    params: SamplingParams
    sink: Sink


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Stop:
    done: threading.Event = field(default_factory=threading.Event)


class EngineLoop:
    """Runs `engine.step()` on its own thread while requests come and go."""

    def __init__(self, engine: LLMEngine | Callable[[], LLMEngine],
                 after_turn: Callable[[], None] | None = None) -> None:
        """
        Args:
            engine: an engine, or a function that builds one; the loop then builds it on its own
                thread (start() waits for it and re-raises its error). Prefer the function: torch
                keeps CPU thread pools per thread, and an engine built on one thread and stepped
                on another ran at half speed on CPU (a second OpenMP team competing for the
                cores: docs/serving-benchmarks.md).
            after_turn: called on the loop thread after each turn (commands applied, a step
                run, stats updated), and once more after the shutdown's aborts; EngineProcess
                sends each step's deltas in one message from here.
        """
        self._factory = engine if callable(engine) else None
        self._after_turn = after_turn
        self.engine: LLMEngine | None = None if callable(engine) else engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._stats = LoopStats()
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pagedllm-engine", daemon=True)
        self._started = False
        self._ready = threading.Event()
        self._build_error: BaseException | None = None
        self._compiles: GrammarCompiles | None = None  # made with the engine, on the loop thread

    def start(self) -> "EngineLoop":
        """Starts the thread; returns once the engine exists."""
        if not self._started:
            self._started = True
            self._thread.start()
            self._ready.wait()
            if self._build_error is not None:
                raise self._build_error
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort every live request (each gets its final delta) and stop the thread."""
        if not self._started or not self._thread.is_alive():
            return
        stop = _Stop()
        self._commands.put(stop)
        stop.done.wait(timeout)
        self._thread.join(timeout)

    def submit(self, request_id: str, prompt: str | Sequence[int],
               params: SamplingParams | None = None, sink: Sink | None = None) -> RequestStream | None:
        """Queue a request. Its deltas go to `sink`, or to the returned RequestStream.

        Bad input is reported to that request alone, as a finished delta with `error` set.
        """
        stream = None
        if sink is None:
            stream = RequestStream(request_id)
            sink = stream.put
        self._commands.put(_Add(request_id, prompt, params or SamplingParams(), sink))
        return stream

    def abort(self, request_id: str) -> None:
        """Abort a request in any state; its blocks are freed on the loop's next turn."""
        self._commands.put(_Abort(request_id))

    def stats(self) -> LoopStats:
        with self._stats_lock:
            return LoopStats(**vars(self._stats))

    # ---- the loop thread -----------------------------------------------------------------------

    def _run(self) -> None:
        if self._factory is not None:
            try:
                self.engine = self._factory()
            except BaseException as e:  # handed to start()'s caller
                self._build_error = e
                self._ready.set()
                return
        self._compiles = GrammarCompiles(self.engine.compile_grammar, self._commands.put,
                                         self.engine.config.grammar_compile_timeout)
        self._ready.set()
        while True:
            busy = self.engine.has_unfinished_requests()
            try:
                # Block when idle (until a grammar's deadline at most); when busy, only drain
                # what has arrived.
                command = self._commands.get(block=not busy,
                                             timeout=self._compiles.seconds_to_deadline())
            except queue.Empty:
                command = None
            while command is not None:
                if isinstance(command, _Stop):
                    self._abort_all("server shutting down", "unavailable")
                    self._compiles.shutdown()
                    self._end_turn()
                    command.done.set()
                    return
                self._apply(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            for late in self._compiles.expire():
                kind = late.params.structured_outputs.kind
                self._refuse(late, f"structured_outputs.{kind} did not compile within "
                                   f"{self._compiles.timeout:g} s (grammar_compile_timeout): "
                                   "simplify the schema, regex or grammar")
            if self.engine.has_unfinished_requests():
                self._step()
            self._end_turn()

    def _apply(self, command: _Add | _Abort | Compiled) -> None:
        if isinstance(command, _Abort):
            waiting = self._compiles.drop(command.request_id)
            if waiting is not None:  # never reached the engine
                self._sinks.pop(command.request_id, None)
                deliver(waiting.sink, StreamDelta(request_id=command.request_id, finished=True,
                                                  finish_reason="abort"))
            for delta in self.engine.abort_request(command.request_id):
                self._emit(delta)
            return
        if isinstance(command, Compiled):
            for add in self._compiles.finished(command):
                if command.error is not None:
                    self._refuse(add, command.error, command.error_code)
                else:
                    self._add(add, command.grammar)
            return
        if command.request_id in self._sinks:
            command.sink(error_delta(command.request_id,
                                     f"request_id {command.request_id!r} is already in use"))
            return
        self._sinks[command.request_id] = command.sink
        so = command.params.structured_outputs
        grammar = self.engine.cached_grammar(command.params) if so is not None else None
        if so is not None and grammar is None:
            self._compiles.submit(command.params, command.request_id, command)
            return
        self._add(command, grammar)

    def _add(self, command: _Add, grammar) -> None:
        """Hand the request to the engine; an error there is that request's final delta."""
        try:
            self.engine.add_request(command.request_id, command.prompt, command.params,
                                    grammar=grammar)
        except OverloadedError as e:
            self._refuse(command, str(e), "unavailable")
        except (ValueError, TypeError) as e:
            self._refuse(command, str(e))
        except Exception as e:  # a bug: this request fails, the loop serves on
            logger.exception("adding request %s failed", command.request_id)
            self._refuse(command, f"internal error: {type(e).__name__}: {e}", "internal")

    def _refuse(self, command: _Add, message: str, code: str = "invalid_argument") -> None:
        self._sinks.pop(command.request_id, None)
        deliver(command.sink, error_delta(command.request_id, message, code))

    def _step(self) -> None:
        try:
            deltas = self.engine.step()
        except Exception as e:  # a bug or device error: fail the live requests, keep serving
            logger.exception("engine step failed")
            self._abort_all(f"engine step failed: {e}", "internal")
            return
        for delta in deltas:
            self._emit(delta)

    def _emit(self, delta: StreamDelta) -> None:
        sink = self._sinks.get(delta.request_id)
        if delta.finished:
            self._sinks.pop(delta.request_id, None)
            self.engine.release(delta.request_id)
        deliver(sink, delta)

    def _abort_all(self, reason: str, code: str) -> None:
        for request_id in list(self._sinks):
            self._compiles.drop(request_id)
            deltas = self.engine.abort_request(request_id) or [error_delta(request_id, reason, code)]
            deltas[-1].error, deltas[-1].error_code = reason, code
            for delta in deltas:
                self._emit(delta)

    def _end_turn(self) -> None:
        self._update_stats()
        if self._after_turn is not None:
            self._after_turn()

    def _update_stats(self) -> None:
        e = self.engine
        with self._stats_lock:
            s = self._stats
            s.num_running = len(e.scheduler.running)
            s.num_waiting = len(e.scheduler.waiting)
            s.kv_cache_usage = e.kv_cache.usage
            s.num_preemptions = e.scheduler.stats.num_preemptions
            s.num_prompt_tokens = e.num_prompt_tokens_total
            s.num_generation_tokens = e.num_generation_tokens_total
            s.num_steps = e.scheduler.stats.num_steps


def error_delta(request_id: str, message: str, code: str = "invalid_argument") -> StreamDelta:
    """The finished delta that tells a request it failed (or was refused) and why.

    `code` is StreamDelta.error_code: "invalid_argument", "unavailable" or "internal".
    """
    return StreamDelta(request_id=request_id, finished=True, finish_reason="abort", error=message,
                       error_code=code)


def deliver(sink: Sink | None, delta: StreamDelta) -> None:
    """Hands a delta to its request's sink, if any; a broken consumer must not stop the others."""
    if sink is None:
        return
    try:
        sink(delta)
    except Exception:
        logger.exception("sink of request %s failed", delta.request_id)

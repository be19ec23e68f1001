"""EngineLoop in a child process: the same interface, the engine's own interpreter and GIL.

Why a process. A server's front end is busy Python too: the Triton adapter builds and sends one
response per token. In one process that thread and the engine thread share one GIL, and on a
busy machine the GIL's holder is often descheduled while the other waits, which slowed the
in-process engine's step against the offline engine (docs/serving-benchmarks.md); vLLM V1 puts
its EngineCore in its own process for the same reason. The cost: one pickled list of delta tuples
per engine step through a pipe (deltas travel as tuples, `pagedllm.outputs.to_wire`: far cheaper
to pickle than the dataclasses).

    parent                                  child (spawned, `_serve`)
    submit/abort/shutdown -> command pipe -> main thread -> EngineLoop.submit/abort/shutdown
    receiver thread -> sinks <- result pipe <- engine thread: after each step, its deltas + stats

Every request still gets exactly one finished delta: its last, an error, an abort, or, if the
child dies, an error naming that (error_code "unavailable"). A child that dies unasked also
calls `on_exit(reason)`, so that its owner can restart it or report itself unready.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from typing import Callable, Sequence

from pagedllm.config import EngineConfig
from pagedllm.engine_loop import LoopStats, RequestStream, Sink, deliver, error_delta
from pagedllm.outputs import WIRE_FIELDS, StreamDelta, from_wire, to_wire
from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def python_executable() -> str:
    """An interpreter for the child, which `spawn` starts as a fresh Python.

    Triton's stub embeds Python, so `sys.executable` can be the stub itself; then the
    interpreter of the same version under `sys.exec_prefix` (or on PATH) is used.
    PAGEDLLM_PYTHON overrides.
    """
    if os.environ.get("PAGEDLLM_PYTHON"):
        return os.environ["PAGEDLLM_PYTHON"]
    if sys.executable and os.path.basename(sys.executable).startswith("python"):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.join(sys.exec_prefix, "bin", version), shutil.which(version)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"no {version} interpreter found for the engine process "
                       f"(sys.executable is {sys.executable!r}); set PAGEDLLM_PYTHON")


class EngineProcess:
    """Runs an EngineLoop over `LLMEngine(config)` in a spawned child process."""

    def __init__(self, config: EngineConfig, start_timeout: float = 600.0,
                 on_exit: Callable[[str], None] | None = None) -> None:
        """
        Args:
            config: the engine's configuration.
            start_timeout: seconds for the child to build its engine.
            on_exit: called (on the receiver thread) with the reason when the child dies without
                being told to stop, after every live request got its error.
        """
        self.config = config
        self._start_timeout = start_timeout
        self._on_exit = on_exit
        self._stopping = False
        self._sinks: dict[str, Sink] = {}
        self._lock = threading.Lock()       # _sinks, _dead, and sends on the command pipe
        self._stats = LoopStats()
        self._dead: str | None = None       # why the child is gone, once it is
        self._process = None
        self._commands = self._results = None
        self._receiver = threading.Thread(target=self._receive, name="pagedllm-engine-receiver",
                                          daemon=True)

    def start(self) -> "EngineProcess":
        """Starts the child; returns once its engine exists (raises RuntimeError if it failed)."""
        ctx = multiprocessing.get_context("spawn")
        ctx.set_executable(python_executable())
        commands_out, commands_in = ctx.Pipe(duplex=False)
        results_out, results_in = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_serve, args=(self.config, commands_out, results_in),
                                    name="pagedllm-engine", daemon=True)
        self._process.start()
        commands_out.close()
        results_in.close()
        self._commands, self._results = commands_in, results_out
        if not self._results.poll(self._start_timeout):
            self._process.kill()
            raise RuntimeError(f"the engine process was not ready in {self._start_timeout:.0f} s")
        try:
            kind, detail = self._results.recv()
        except EOFError:  # it died before it could say why (killed, out of memory)
            self._process.join(5)
            kind, detail = "error", f"it exited with code {self._process.exitcode}"
        if kind != "ready":
            self._process.join(5)
            raise RuntimeError(f"the engine process failed to start: {detail}")
        if tuple(detail) != WIRE_FIELDS:  # another version of the package in the child
            self._process.kill()
            raise RuntimeError(f"the engine process sends deltas as {detail}, this process reads "
                               f"{WIRE_FIELDS}: both must run the same pagedllm")
        self._receiver.start()
        return self

    def submit(self, request_id: str, prompt: str | Sequence[int],
               params: SamplingParams | None = None, sink: Sink | None = None) -> RequestStream | None:
        """As EngineLoop.submit: deltas go to `sink` (called on the receiver thread) or a stream."""
        stream = None
        if sink is None:
            stream = RequestStream(request_id)
            sink = stream.put
        with self._lock:
            reason, code = self._dead, "unavailable"
            if reason is None and request_id in self._sinks:
                reason, code = f"request_id {request_id!r} is already in use", "invalid_argument"
            if reason is None:
                self._sinks[request_id] = sink
                if not self._send(("add", request_id, prompt, params or SamplingParams())):
                    del self._sinks[request_id]
                    reason = self._dead
        if reason is not None:
            sink(error_delta(request_id, reason, code))
        return stream

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._send(("abort", request_id))

    def stats(self) -> LoopStats:
        with self._lock:
            return LoopStats(**vars(self._stats))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort every live request (each gets its final delta) and stop the child."""
        if self._process is None:
            return
        with self._lock:
            self._stopping = True
            self._send(("stop",))
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        if self._receiver.is_alive():
            self._receiver.join(timeout)
        self._commands.close()

    # ---- parent internals ------------------------------------------------------------------

    def _send(self, command: tuple) -> bool:
        """Sends a command (caller holds the lock); False once the child is gone."""
        if self._dead is not None:
            return False
        try:
            self._commands.send(command)
            return True
        except (OSError, ValueError) as e:
            self._dead = f"the engine process is gone ({e})"
            return False

    def _receive(self) -> None:
        """The receiver thread: deltas of each step to their sinks, until the child exits."""
        while True:
            try:
                rows, stats = self._results.recv()
            except (EOFError, OSError):
                break
            deltas = [from_wire(row) for row in rows]
            with self._lock:
                self._stats = stats
                sinks = [self._sinks.pop(d.request_id, None) if d.finished
                         else self._sinks.get(d.request_id) for d in deltas]
            for delta, sink in zip(deltas, sinks):
                deliver(sink, delta)
        self._process.join(5)
        with self._lock:
            self._dead = self._dead or f"the engine process exited (code {self._process.exitcode})"
            orphans, self._sinks = self._sinks, {}
            self._stats = LoopStats()  # a dead engine runs nothing: no stale gauges
            unasked = not self._stopping
        if orphans:
            logger.error("%s with %d live requests", self._dead, len(orphans))
        for request_id, sink in orphans.items():
            deliver(sink, error_delta(request_id, self._dead, "unavailable"))
        if unasked and self._on_exit is not None:
            try:
                self._on_exit(self._dead)
            except Exception:  # the owner's reaction must not kill this thread's last words
                logger.exception("on_exit of the engine process failed")

    @property
    def alive(self) -> bool:
        """Whether the child runs and takes requests."""
        with self._lock:
            return self._dead is None and self._process is not None and self._process.is_alive()


# ---- the child ---------------------------------------------------------------------------------

def _serve(config: EngineConfig, commands, results) -> None:
    """The child's main: builds the engine, then applies commands until told to stop.

    The engine thread sends, after each loop turn, the deltas that turn made and the stats
    (one message per step, not per token). A closed command pipe (the parent died) stops it,
    and sends to a parent that is gone are dropped, so the engine can still wind down.
    """
    # A terminal's Ctrl-C reaches the whole foreground process group, this child too; its parent
    # stops it (the "stop" command, or EOF), so a SIGINT here would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pagedllm.engine import LLMEngine
    from pagedllm.engine_loop import EngineLoop

    outbox: list[StreamDelta] = []
    last_stats: LoopStats | None = None

    def flush() -> None:  # on the engine thread
        nonlocal last_stats
        stats = loop.stats()
        if outbox or stats != last_stats:
            rows = [to_wire(delta) for delta in outbox]
            outbox.clear()
            last_stats = stats
            try:
                results.send((rows, stats))
            except OSError:  # the parent is gone; its EOF on the command pipe stops us next
                pass

    loop = EngineLoop(lambda: LLMEngine(config), after_turn=flush)
    try:
        loop.start()
    except BaseException as e:  # noqa: BLE001 - told to the parent, which raises it
        results.send(("error", f"{type(e).__name__}: {e}"))
        return
    results.send(("ready", WIRE_FIELDS))
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):
            command = ("stop",)
        if command[0] == "add":
            _, request_id, prompt, params = command
            loop.submit(request_id, prompt, params, sink=outbox.append)
        elif command[0] == "abort":
            loop.abort(command[1])
        else:
            loop.shutdown()
            results.close()
            return

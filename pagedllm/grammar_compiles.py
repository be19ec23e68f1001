"""Grammars compiled beside the engine's thread, with a deadline: a slow schema delays only its own request.

A structured-output request's grammar used to compile on the engine thread, inside add_request:
one pathological schema (hundreds of anyOf patterns) stalled every other client for as long as it
compiled. xgrammar releases the GIL while compiling, so a worker thread compiles while the engine
thread keeps stepping the others.

A compile cannot be interrupted. One past its deadline fails its waiting requests at once (an
error naming `structured_outputs.<kind>`) and runs on to its end in the background; its result
still lands in the compiler's cache. Requests with the same grammar share one compile, so
repeating a slow schema does not pile up workers.

Only the engine loop's thread calls this object's methods; the workers only compile and hand
the result back through `notify`, which puts it on the loop's command queue.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from pagedllm.sampling_params import SamplingParams

WORKERS = 2
"""Compiles running at once; more wait for a worker (their deadline runs meanwhile)."""


@dataclass
class Compiled:
    """A loop command: the compile of `key` ended, with a grammar or an error message."""

    key: tuple
    grammar: Any = None
    error: str | None = None
    error_code: str = "invalid_argument"


@dataclass
class _Waiting:
    request_id: str
    deadline: float
    item: Any  # what the loop gets back: its queued _Add command


@dataclass
class GrammarCompiles:
    """The requests waiting for a grammar, keyed by the grammar they wait for.

    Args:
        compile_fn: params -> compiled grammar; ValueError names what is wrong with it.
        notify: called on a worker thread with each Compiled (the loop queues it).
        timeout: seconds a request waits for its grammar before it is refused.
    """

    compile_fn: Callable[[SamplingParams], Any]
    notify: Callable[[Compiled], None]
    timeout: float
    _waiting: dict[tuple, list[_Waiting]] = field(default_factory=dict)
    _running: set[tuple] = field(default_factory=set)
    _pool: ThreadPoolExecutor | None = None

    def submit(self, params: SamplingParams, request_id: str, item: Any) -> None:
        """Start compiling `params`' grammar (unless it is compiling) for the request `item`."""
        key = params.structured_outputs.key()
        self._waiting.setdefault(key, []).append(
            _Waiting(request_id, time.monotonic() + self.timeout, item))
        if key in self._running:
            return
        self._running.add(key)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="pagedllm-grammar")
        future = self._pool.submit(self.compile_fn, params)
        future.add_done_callback(lambda f: self.notify(_result(key, f)))

    def finished(self, done: Compiled) -> list[Any]:
        """The items that waited for `done`'s grammar (none if all expired or were dropped)."""
        self._running.discard(done.key)
        return [w.item for w in self._waiting.pop(done.key, [])]

    def expire(self) -> list[Any]:
        """The items whose deadline passed; they wait no more."""
        now, out = time.monotonic(), []
        for key in list(self._waiting):
            keep = [w for w in self._waiting[key] if w.deadline > now]
            out += [w.item for w in self._waiting[key] if w.deadline <= now]
            if keep:
                self._waiting[key] = keep
            else:
                del self._waiting[key]
        return out

    def drop(self, request_id: str) -> Any | None:
        """Stop waiting for the request (an abort); its item, or None if it was not waiting."""
        for key, waiting in self._waiting.items():
            for w in waiting:
                if w.request_id == request_id:
                    waiting.remove(w)
                    if not waiting:
                        del self._waiting[key]
                    return w.item
        return None

    def seconds_to_deadline(self) -> float | None:
        """Until the nearest deadline (None when nothing waits): how long the idle loop may block."""
        deadlines = [w.deadline for ws in self._waiting.values() for w in ws]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _result(key: tuple, future: Future) -> Compiled:
    try:
        return Compiled(key, grammar=future.result())
    except ValueError as e:
        return Compiled(key, error=str(e))
    except BaseException as e:  # noqa: BLE001 - a bug in the compiler: that request fails
        return Compiled(key, error=f"internal error compiling the grammar: {type(e).__name__}: {e}",
                        error_code="internal")

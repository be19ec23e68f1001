"""Generation through Triton: one gRPC stream per request, cancelled all the way down.

Text prompts go to the `ensemble` (vllm_backend's tensors, shape [1]: text_input, stream=true,
sampling_parameters JSON, exclude_input_in_output=true); token-id prompts go to the `llm` model
itself (a batch dimension: input_ids [1, L], the rest [1, 1]), whose output_ids [1, n, L] decode
alone to each completion's new text. Either way every response is a `Reply`: per completion the
new text, its finish reason (None until it ends), its new tokens and logprobs, plus the prompt's
token count and the request's cancel_token.

Why cancelling needs care. A client that goes away must not leave the engine generating (and
holding KV blocks) for nobody. Through the ensemble, Triton 2.51 does not pass a cancelled stream
on to the running `llm` step, so `Generation.close()` sends a cancel request naming the
cancel_token the responses carry (see clients/pagedllm_clients/cancel.py); before the first response there is no
token yet, so a background task keeps reading until one brings it, then cancels. The engine
frees the blocks on its next step. The same happens on request timeout and on shutdown
(`TritonClient.close`).

Threading: everything runs on the event loop's one thread (no locks needed); each stream has a
reader task that moves responses into a queue, so that a consumer waiting with a timeout, or
giving up, never cancels a gRPC read in the middle.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Sequence

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient

from pagedllm_openai.errors import OpenAIError
from pagedllm_openai.replies import Reply, is_final, parse_reply

logger = logging.getLogger("pagedllm.openai")

ENSEMBLE = "ensemble"
LLM = "llm"
CANCEL_TIMEOUT_S = 5.0
CANCEL_DRAIN_S = 10.0  # most seconds a cancelled request's final response is waited for
_TIMED_OUT = object()  # queued when a generation's deadline passes
_NOTHING = object()    # no item held back


class TritonError(Exception):
    """An error response of Triton's (its message names the input at fault, where it can)."""


def _tensor(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value)
    return t


def _bytes(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)


def generate_inputs(prompt: str | Sequence[int], sampling: dict) -> tuple[str, list]:
    """(model, input tensors) of one streamed generation: text -> ensemble, ids -> llm."""
    params = _bytes(json.dumps(sampling))
    yes = np.array([True], dtype=bool)
    if isinstance(prompt, str):
        return ENSEMBLE, [_tensor("text_input", _bytes(prompt), "BYTES"),
                          _tensor("stream", yes, "BOOL"),
                          _tensor("sampling_parameters", params, "BYTES"),
                          _tensor("exclude_input_in_output", yes, "BOOL")]
    ids = np.array([list(prompt)], dtype=np.int64)
    return LLM, [_tensor("input_ids", ids, "INT64"),
                 _tensor("stream", yes[None], "BOOL"),
                 _tensor("sampling_parameters", params[None], "BYTES"),
                 _tensor("exclude_input_in_output", yes[None], "BOOL")]


def cancel_inputs(model: str, cancel_token: str) -> list:
    """A cancel request's tensors (the ensemble also requires a text_input, left empty)."""
    token = _bytes(cancel_token)
    if model == ENSEMBLE:
        return [_tensor("cancel", token, "BYTES"), _tensor("text_input", _bytes(""), "BYTES")]
    return [_tensor("cancel", token[None], "BYTES")]


class Generation:
    """One request on its own gRPC stream: `async for reply in generation`, then `close()`.

    Iterating raises TritonError for Triton's error response, OpenAIError 503 when Triton cannot
    be reached, 504 when `timeout_s` passes (the request is cancelled first), or the error given
    to `abort` (shutdown).
    """

    def __init__(self, client: TritonClient, model: str, inputs: list, timeout_s: float,
                 decode: Callable[[Sequence[int]], str] | None, request_id: str | None = None):
        self._client = client
        self.model = model
        self.request_id = request_id or f"openai-{uuid.uuid4().hex[:16]}"
        self.cancel_token = ""
        self._decode = decode
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue = asyncio.Queue()
        self._held = _NOTHING  # an item taken from the queue while merging, for the next read
        # NOTE: the deadline is a sentinel in the queue, not asyncio.wait_for around the read:
        # before Python 3.12, wait_for can swallow a cancellation that comes as a reply arrives,
        # and a consumer cancelled for a client's disconnect would then read on to the end.
        self._timer = asyncio.get_running_loop().call_later(
            timeout_s, self._queue.put_nowait, _TIMED_OUT)
        self._ended = asyncio.Event()      # the request iterator may finish (half-close)
        self.finished = False              # the engine's request has ended (final or error)
        self._closed = False               # nobody reads replies any more
        self._cancel_sent = False
        self._abort_error: OpenAIError | None = None
        request = {"model_name": model, "inputs": inputs, "request_id": self.request_id}
        self._call = client.grpc.stream_infer(self._requests(request))
        self._reader = client.spawn(self._read())

    async def _requests(self, request: dict):
        yield request
        await self._ended.wait()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Reply:
        if self._abort_error is not None:
            raise self._abort_error
        if self._closed:
            raise StopAsyncIteration
        item, self._held = self._held, _NOTHING
        if item is _NOTHING:
            item = await self._queue.get()
        # NOTE: replies that queued up meanwhile leave as one. When this process lags the
        # engine (hundreds of streams), it then sends fewer, larger chunks instead of falling
        # further behind; vLLM's output collector merges a lagging consumer's outputs too.
        while isinstance(item, Reply) and not item.finished and not self._queue.empty():
            following = self._queue.get_nowait()
            if not isinstance(following, Reply):
                self._held = following  # the end, an error or the deadline: next time
                break
            item = item.merged(following)
        if item is _TIMED_OUT:
            self.close()
            raise OpenAIError(504, f"the request did not finish within {self._timeout_s:g} s "
                                   "(request_timeout_s); it was cancelled", None, "timeout")
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Ends the request: if the engine is still on it, cancels it (now, or once the first
        response brings the cancel_token). Safe to call more than once, and from `finally`."""
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        self._queue.put_nowait(None)  # wakes a consumer waiting for a reply: the end
        self._client.forget(self)
        if self.finished or (not self.cancel_token and self._reader.done()):
            self._end_call()
        elif self.cancel_token:
            self._start_cancel()
        # else: the reader cancels as soon as a response brings the token

    def abort(self, error: OpenAIError) -> None:
        """Cancels the request and makes the consumer's next read raise `error` (shutdown)."""
        if not self._closed:
            self._abort_error = error
            self._queue.put_nowait(error)
            self.close()

    async def _read(self) -> None:
        try:
            async for result, error in self._call:
                if error is not None:
                    self.finished = True
                    self._queue.put_nowait(TritonError(str(error)))
                    break
                reply = parse_reply(result, self._decode)
                self.cancel_token = reply.cancel_token or self.cancel_token
                if reply.finished or is_final(result):
                    self.finished = True
                if self._closed:
                    if self.finished:
                        break
                    if self.cancel_token:
                        self._start_cancel()
                    # Read on: the stream ends with the cancelled request's final response, or
                    # when _cancel() ends the call once Triton confirms (CancelledError here).
                    continue
                self._queue.put_nowait(reply)
                if self.finished:
                    break
            else:
                if not self.finished:
                    self._queue.put_nowait(OpenAIError(
                        503, "Triton ended the response stream before the request finished",
                        None, "unavailable"))
        except grpc.aio.AioRpcError as e:
            if not self._closed:
                self._queue.put_nowait(_rpc_error(e, self._client.url))
        except Exception as e:  # noqa: BLE001 - a reply we cannot read still ends the request
            logger.exception("reading %s's responses failed", self.request_id)
            self._queue.put_nowait(OpenAIError(500, f"reading Triton's response failed "
                                                    f"({type(e).__name__}: {e})", None,
                                               "internal_error"))
        finally:
            self._queue.put_nowait(None)
            if self._closed and (self.finished or not self.cancel_token):
                self._end_call()  # else _cancel() ends it once the engine has the cancel

    def _start_cancel(self) -> None:
        if not self._cancel_sent:
            self._cancel_sent = True
            self._client.spawn(self._cancel())

    async def _cancel(self) -> None:
        """Cancels the engine's request by its token; the call ends with its final response.

        NOTE: the reader reads on to the cancelled request's final ("abort") response before
        the call ends, so the ensemble's request ends the way every request does, with its one
        FINAL, instead of by the gRPC stream being torn down under responses still in flight.
        Only if that response does not come in CANCEL_DRAIN_S is the call ended anyway.
        """
        try:
            await self._client.cancel(self.model, self.cancel_token)
            await asyncio.wait_for(self._ended.wait(), CANCEL_DRAIN_S)
        except Exception as e:  # noqa: BLE001 - finished meanwhile, or no final response
            logger.info("cancel of %s: %s", self.request_id, e)
        finally:
            self._end_call()

    def _end_call(self) -> None:
        self._ended.set()
        self._call.cancel()


def _rpc_error(error: grpc.aio.AioRpcError, url: str) -> OpenAIError:
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return OpenAIError(503, f"Triton is not reachable at {url}: {error.details()}", None,
                           "unavailable")
    return OpenAIError(503, f"Triton's stream failed ({error.code().name}): {error.details()}",
                       None, "unavailable")


class TritonClient:
    """The service's one gRPC channel to Triton, and every Generation alive on it.

    Args:
        url: Triton's gRPC HOST:PORT.
        timeout_s: each generation's deadline (request_timeout_s).
        decode: output ids -> text, for token-id prompts (the llm model returns ids).
    """

    def __init__(self, url: str, timeout_s: float, decode: Callable[[Sequence[int]], str]):
        self.url = url
        self.grpc = grpcclient.InferenceServerClient(url)
        self._timeout_s = timeout_s
        self._decode = decode
        self._live: set[Generation] = set()
        self._tasks: set[asyncio.Task] = set()
        self.cancels_sent = 0
        self._closed = False

    def generate(self, prompt: str | Sequence[int], sampling: dict,
                 request_id: str | None = None) -> Generation:
        """Starts one streamed generation (text prompts through the ensemble, ids on llm);
        `request_id` is Triton's id for it (None: one of the service's own)."""
        model, inputs = generate_inputs(prompt, sampling)
        decode = self._decode if model == LLM else None
        generation = Generation(self, model, inputs, self._timeout_s, decode, request_id)
        self._live.add(generation)
        return generation

    async def cancel(self, model: str, cancel_token: str) -> None:
        """Aborts the request whose responses carried `cancel_token`; returns once Triton
        answers (TritonError if it refuses: the request had finished, say)."""
        self.cancels_sent += 1

        async def one():
            yield {"model_name": model, "inputs": cancel_inputs(model, cancel_token),
                   "request_id": "cancel"}
            await asyncio.sleep(CANCEL_TIMEOUT_S)

        call = self.grpc.stream_infer(one())

        async def first_reply() -> None:
            async for _, error in call:
                if error is not None:
                    raise TritonError(str(error))
                return

        try:
            await asyncio.wait_for(first_reply(), CANCEL_TIMEOUT_S)
        finally:
            call.cancel()

    async def model_ready(self, model: str = ENSEMBLE) -> bool:
        try:
            return bool(await self.grpc.is_model_ready(model))
        except Exception:  # noqa: BLE001 - unreachable is simply not ready
            return False

    def spawn(self, coro) -> asyncio.Task:
        """Runs `coro` as a task this client owns (awaited on close; never garbage-collected
        half-way)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def forget(self, generation: Generation) -> None:
        self._live.discard(generation)

    async def abort_all(self, timeout: float = CANCEL_TIMEOUT_S) -> None:
        """Cancels every live generation in the engine (their consumers get a 503) and waits
        for the cancels to go out (shutdown: before the HTTP connections are drained)."""
        error = OpenAIError(503, "the server is shutting down; the request was cancelled",
                            None, "unavailable")
        for generation in list(self._live):
            generation.abort(error)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        """abort_all, then closes the channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self.abort_all()
        for task in list(self._tasks):
            task.cancel()
        await self.grpc.close()

"""Triton entry of the `llm` model (a Python-based backend): requests in, engine deltas out.

Thin on purpose: parsing lives in request_inputs.py, response arrays in responses.py (with
ids-for-text in text_ids.py), metrics in metrics.py, and all engine logic behind EngineLoop, which
runs in a child process (EngineProcess; the config's parameter `engine_process` "false" keeps it
on a thread here). Three threads meet here:

    Triton's execute()  -> loop.submit(...)                     (returns at once: decoupled)
    engine              -> sink: puts each delta on one queue   (never blocks on Triton)
    sender thread       -> drains the queue, one response per request per drain (deltas that
                           piled up while it sent are merged), polls cancellation, metrics

Every request gets exactly one response flagged FINAL: its last delta, its error, or the reply
to a cancel.

A dead engine process. Its live requests get an UNAVAILABLE error at once (EngineProcess). Then
this model unloads itself (Triton's explicit model control, as `make serve` runs it), so
tritonserver reports `llm` and `ensemble` not ready, and the serving watchdog
(pagedllm_triton.serving.watchdog) loads them again: a fresh engine. Where the server does not
allow that (another model-control mode), the engine process is started again in place, with
backoff, and readiness cannot say so (Triton 2.51 has no other way for a model to be unready).
`pagedllm:engine_restarts_total` counts restarts either way (the watchdog hands the count to
the new instance in the config parameter `engine_restarts`).

Cancellation. On a direct call of `llm`, a client that cancels or disconnects shows up as
`response_sender.is_cancelled()`, polled for every live request every CANCEL_POLL_S. Through the
`ensemble`, Triton 2.51 does not pass the cancellation on to this step (the ensemble only stops
forwarding our responses), so a client cancels by token: every response of a request carries
`cancel_token`, a random token this model issued for it, and a request whose input `cancel`
holds that token aborts it. Only whoever reads the request's responses knows its token: no
client can cancel another's request (Triton's request ids are chosen by clients, and guessable).

The engine's request id is Triton's request id (the OpenAI service's X-Request-Id), so that logs
and traces name requests as their clients do; a request without one, or whose id a live request
already has, runs under its cancel token instead.
"""
from __future__ import annotations

import os

import json
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from pagedllm.config import EngineConfig
from pagedllm.engine_loop import EngineLoop
from pagedllm.engine_process import EngineProcess
from pagedllm.outputs import StreamDelta, coalesce
from pagedllm.tokenizer import Tokenizer
from pagedllm_triton.metrics import TritonMetrics
from pagedllm_triton.request_inputs import RETURN_FLAGS, parse_inputs
from pagedllm_triton.responses import RequestResponses
from pagedllm_triton.text_ids import TextIds
from pagedllm_triton.stub_watchdog import exit_with_server

logger = logging.getLogger("pagedllm.triton")

INPUTS = ("input_ids", "input_lengths", "text_has_nul", "stream", "sampling_parameters",
          "exclude_input_in_output", "max_tokens", "min_length", "cancel", *RETURN_FLAGS)
CANCEL_POLL_S = 0.2
STATS_EVERY_S = 0.05
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # in-place restarts, when the model cannot unload
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# StreamDelta.error_code -> pb_utils.TritonError's code name (looked up when an error is sent:
# the stub binds TritonError only after it has imported this file).
ERROR_CODES = {"invalid_argument": "INVALID_ARG", "unavailable": "UNAVAILABLE",
               "internal": "INTERNAL"}


def _flag(model_config: dict, key: str, default: bool) -> bool:
    """A "true"/"false" entry of the config's `parameters`; `default` when it is absent."""
    entry = (model_config.get("parameters") or {}).get(key)
    if entry is None:
        return default
    value = str(entry.get("string_value", "")).strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"config.pbtxt parameter {key!r} must be \"true\" or \"false\", "
                         f"not {entry.get('string_value')!r}")
    return value == "true"


@dataclass
class _Live:
    """A request between submit and its final response (its responses: the sender thread's)."""

    sender: object
    responses: RequestResponses
    arrival: float
    last_token_time: float | None = None
    cancelled: bool = False
    cancel_token: str = ""


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_dir = Path(args["model_repository"])
        engine_args = json.loads((model_dir / "engine.json").read_text())
        if not os.path.isabs(engine_args["model"]):
            engine_args["model"] = str((model_dir / engine_args["model"]).resolve())
        model_config = json.loads(args["model_config"])
        own_process = _flag(model_config, "engine_process", True)
        config = EngineConfig(**engine_args)
        self._config, self._model_name = config, args["model_name"]
        if own_process:  # this process's GIL is busy sending responses (see EngineProcess)
            # NOTE: self.loop is swapped whole on an in-place restart; readers take it once.
            self.loop = EngineProcess(config, on_exit=self._engine_died).start()
            tokenizer = Tokenizer.from_dir(config.model)  # the engine's is in the child
        else:  # built on the loop's thread: torch's CPU pools are per thread
            from pagedllm.engine import LLMEngine  # here only: the process route needs no torch
            self.loop = EngineLoop(lambda: LLMEngine(config)).start()
            tokenizer = self.loop.engine.tokenizer
        self.text_ids = {skip: TextIds(tokenizer, skip) for skip in (True, False)}
        self.metrics = TritonMetrics({"model": args["model_name"],
                                      "version": args["model_version"]})
        restarts = (model_config.get("parameters") or {}).get("engine_restarts", {})
        if int(restarts.get("string_value", "0") or 0):
            self.metrics.engine_restarts.increment(int(restarts["string_value"]))
        self._deltas: queue.SimpleQueue = queue.SimpleQueue()
        self._live: dict[str, _Live] = {}  # by the engine's request id
        self._tokens: dict[str, str] = {}  # cancel_token -> the engine's request id
        self._live_lock = threading.Lock()  # both: added by execute(), removed by the sender
        self._sender = threading.Thread(target=self._send_loop, name="pagedllm-sender",
                                        daemon=True)
        self._sender.start()
        exit_with_server()
        logger.info("pagedllm engine ready: %s", engine_args)

    def execute(self, requests):
        for request in requests:
            self._accept(request)
        return None

    def finalize(self) -> None:
        self.loop.shutdown()        # every live request gets its final (abort) delta
        self._deltas.put(None)
        self._sender.join(timeout=10)

    # ---- a dead engine ----------------------------------------------------------------------

    def _engine_died(self, reason: str) -> None:
        """EngineProcess's on_exit: its requests have their errors; now get a new engine."""
        logger.error("%s: recovering", reason)
        threading.Thread(target=self._recover, name="pagedllm-recover", daemon=True).start()

    def _recover(self) -> None:
        try:
            pb_utils.unload_model(self._model_name)  # unready now; the watchdog loads us again
            return
        except Exception as e:  # noqa: BLE001 - not explicit model control: restart in place
            logger.warning("cannot unload %s (%s): restarting the engine in place",
                           self._model_name, e)
        for delay in RESTART_BACKOFF_S:
            time.sleep(delay)
            try:
                self.loop = EngineProcess(self._config, on_exit=self._engine_died).start()
            except Exception:  # noqa: BLE001 - try again after a longer wait
                logger.exception("restarting the engine failed")
                continue
            self.metrics.engine_restarts.increment(1)
            return
        logger.error("the engine did not start again after %d tries: requests fail until the "
                     "model is loaded again", len(RESTART_BACKOFF_S))

    # ---- Triton's thread -----------------------------------------------------------------

    def _accept(self, request) -> None:
        sender = request.get_response_sender()
        try:
            tensors = {}
            for name in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            inputs = parse_inputs(tensors, self.text_ids[True].vocab_size)
        except ValueError as e:
            _send_error(sender, str(e), "invalid_argument")
            return
        if inputs.cancel:
            self._cancel(sender, inputs.cancel_token)
            return
        # NOTE: the cancel token is never the client's choice (the engine's id may be).
        token = secrets.token_urlsafe(16)
        params = inputs.params
        text_ids = self.text_ids[params.skip_special_tokens]
        prompt = text_ids.prompt_ids(inputs.prompt_token_ids) if inputs.prepend_prompt else []
        responses = RequestResponses(
            text_ids=text_ids, names=self.text_ids[False], stream=inputs.stream, n=params.n,
            want_logprobs=params.logprobs is not None, prompt_ids=prompt,
            num_input_tokens=len(inputs.prompt_token_ids), cancel_token=token)
        with self._live_lock:
            engine_id = engine_request_id(request.request_id(), token, self._live)
            self._live[engine_id] = _Live(sender, responses, time.monotonic(), cancel_token=token)
            self._tokens[token] = engine_id
        self.loop.submit(engine_id, inputs.prompt_token_ids, params, sink=self._deltas.put)

    def _cancel(self, sender, token: str) -> None:
        """Aborts the live request `token` names; the reply is this cancel request's only one."""
        with self._live_lock:
            engine_id = self._tokens.get(token)
            live = engine_id is not None and engine_id in self._live
        if not live:
            _send_error(sender, "input 'cancel' names no live request (it finished, or the "
                                "token is not a cancel_token this server issued)",
                        "invalid_argument")
            return
        self.loop.abort(engine_id)
        responses = RequestResponses(
            text_ids=self.text_ids[True], names=self.text_ids[False], stream=True, n=1,
            want_logprobs=False, prompt_ids=[], num_input_tokens=0, cancel_token=token)
        arrays = responses.update([StreamDelta(request_id=token, finished=True,
                                               finish_reason="abort")])
        _send_final(sender, _response(arrays))

    # ---- the sender thread -----------------------------------------------------------------

    def _send_loop(self) -> None:
        last_poll = last_stats = time.monotonic()
        running = True
        while running:
            try:
                batch = [self._deltas.get(timeout=STATS_EVERY_S)]
            except queue.Empty:
                batch = []
            while True:  # drain: when sending lags the engine, coalesce into fewer responses
                try:
                    batch.append(self._deltas.get_nowait())
                except queue.Empty:
                    break
            if None in batch:  # finalize(): send what came before, then stop
                batch, running = batch[:batch.index(None)], False
            by_request: dict[str, list[StreamDelta]] = {}
            for delta in coalesce(batch):
                by_request.setdefault(delta.request_id, []).append(delta)
            for request_id, deltas in by_request.items():
                try:
                    self._send(request_id, deltas)
                except Exception as e:  # a bug: this request ends with an error, others go on
                    logger.exception("sending a response of %s failed", request_id)
                    self._fail(request_id, f"internal error while answering: {type(e).__name__}")
            now = time.monotonic()
            if now - last_stats >= STATS_EVERY_S:
                self.metrics.update(self.loop.stats())
                last_stats = now
            if now - last_poll >= CANCEL_POLL_S:
                self._poll_cancelled()
                last_poll = now

    def _send(self, request_id: str, deltas: list[StreamDelta]) -> None:
        """One response for one request's deltas of this drain (or none, when not yet due)."""
        finished = any(d.finished for d in deltas)
        with self._live_lock:
            live = self._live.get(request_id)
            if live is not None and finished:
                del self._live[request_id]
                self._tokens.pop(live.cancel_token, None)
        if live is None:
            return
        self._observe(live, deltas, finished)
        if live.cancelled:
            if finished:
                _send_final(live.sender, None)
            return
        error = next((d for d in deltas if d.error is not None), None)
        if error is not None:
            _send_error(live.sender, error.error, error.error_code or "internal")
            return
        arrays = live.responses.update(deltas)
        if arrays is None:
            return
        if finished:
            _send_final(live.sender, _response(arrays))
        else:
            live.sender.send(_response(arrays))

    def _fail(self, request_id: str, message: str) -> None:
        """Ends a request whose response could not be built: an error, its engine work aborted."""
        with self._live_lock:
            live = self._live.pop(request_id, None)
            if live is not None:
                self._tokens.pop(live.cancel_token, None)
        if live is not None:
            self.loop.abort(request_id)
            _send_error(live.sender, message, "internal")

    def _observe(self, live: _Live, deltas: list[StreamDelta], finished: bool) -> None:
        now = time.monotonic()
        if any(d.token_ids for d in deltas):
            if live.last_token_time is None:
                self.metrics.ttft.observe(now - live.arrival)
            else:
                self.metrics.itl.observe(now - live.last_token_time)
            live.last_token_time = now
        if finished:
            self.metrics.e2e.observe(now - live.arrival)

    def _poll_cancelled(self) -> None:
        with self._live_lock:
            items = list(self._live.items())
        for request_id, live in items:
            if not live.cancelled and live.sender.is_cancelled():
                live.cancelled = True
                self.loop.abort(request_id)


def engine_request_id(client_id: str, token: str, live: dict) -> str:
    """The engine's id for a request: Triton's request id when it has one that no live request
    has, else its cancel token (unique)."""
    if client_id and client_id not in live:
        return client_id
    return token


def _response(arrays: dict[str, np.ndarray]):
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, array) for name, array in arrays.items()])


def _send_error(sender, message: str, code: str) -> None:
    triton_code = getattr(pb_utils.TritonError, ERROR_CODES.get(code, "INTERNAL"))
    _send_final(sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(message, triton_code)))


def _send_final(sender, response) -> None:
    try:
        if response is None:
            sender.send(flags=FINAL)
        else:
            sender.send(response, flags=FINAL)
    except Exception:  # the client is gone; nothing left to tell it
        logger.warning("final response not delivered", exc_info=True)

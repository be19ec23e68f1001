"""Triton entry of the `llm` model (a Python-based backend): requests in, engine deltas out.

Thin on purpose: parsing lives in request_inputs.py, ids-for-text in text_ids.py, metrics in
metrics.py, and all engine logic behind EngineLoop, which runs in a child process
(EngineProcess; the config's parameter `engine_process` "false" keeps it on a thread here). Three
threads meet here:

    Triton's execute()  -> loop.submit(...)                     (returns at once: decoupled)
    engine              -> sink: puts each delta on one queue   (never blocks on Triton)
    sender thread       -> drains the queue, one response per request per drain (deltas that
                           piled up while it sent are merged), polls cancellation, metrics

Every request gets exactly one response flagged FINAL: its last delta, its error, or the reply
to a cancel.

Cancellation. On a direct call of `llm`, a client that cancels or disconnects shows up as
`response_sender.is_cancelled()`, polled for every live request every CANCEL_POLL_S. Through the
`ensemble`, Triton 2.51 does not pass the cancellation on to this step (the ensemble only stops
forwarding our responses), so a client cancels by id: a request to `llm` (or `ensemble`) with
the same request id and input `cancel` = true aborts the live requests that carry that id.
pagedllm_clients.generate and pagedllm_clients.load do this when they cancel a stream.
"""
from __future__ import annotations

import os
import site
import sys

# Triton's stub embeds an isolated Python: it ignores PYTHONPATH. The launcher's entries (the
# stub's numpy 1.x, the project's environment and its installed packages) are made site dirs,
# ahead of the stub's own path, with their .pth files (the project's editable install).
_stub_path = list(sys.path)
for _p in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_p)
sys.path[:] = [p for p in sys.path if p not in _stub_path] + _stub_path

import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from pagedllm.config import EngineConfig  # noqa: E402
from pagedllm.engine_loop import EngineLoop  # noqa: E402
from pagedllm.engine_process import EngineProcess  # noqa: E402
from pagedllm.outputs import StreamDelta, coalesce  # noqa: E402
from pagedllm.tokenizer import Tokenizer  # noqa: E402
from pagedllm_backends.pagedllm.metrics import TritonMetrics  # noqa: E402
from pagedllm_backends.pagedllm.request_inputs import parse_inputs  # noqa: E402
from pagedllm_backends.pagedllm.text_ids import TextIds  # noqa: E402
from pagedllm_backends.stub_watchdog import exit_with_server  # noqa: E402

logger = logging.getLogger("pagedllm.triton")

INPUTS = ("input_ids", "input_lengths", "text_has_nul", "stream", "sampling_parameters",
          "exclude_input_in_output", "max_tokens", "cancel")
CANCEL_POLL_S = 0.2
STATS_EVERY_S = 0.05
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


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
    """A request between submit and its final response (touched by the sender thread only)."""

    sender: object
    triton_id: str
    stream: bool
    skip_special_tokens: bool
    arrival: float
    pending: list = field(default_factory=list)
    collected: list[int] = field(default_factory=list)  # ids of a non-streamed response
    last_token_time: float | None = None
    cancelled: bool = False


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_dir = Path(args["model_repository"])
        engine_args = json.loads((model_dir / "engine.json").read_text())
        if not os.path.isabs(engine_args["model"]):
            engine_args["model"] = str((model_dir / engine_args["model"]).resolve())
        own_process = _flag(json.loads(args["model_config"]), "engine_process", True)
        config = EngineConfig(**engine_args)
        if own_process:  # this process's GIL is busy sending responses (see EngineProcess)
            self.loop = EngineProcess(config).start()
            tokenizer = Tokenizer.from_dir(config.model)  # the engine's is in the child
        else:  # built on the loop's thread: torch's CPU pools are per thread
            from pagedllm.engine import LLMEngine  # here only: the process route needs no torch
            self.loop = EngineLoop(lambda: LLMEngine(config)).start()
            tokenizer = self.loop.engine.tokenizer
        self.text_ids = {skip: TextIds(tokenizer, skip) for skip in (True, False)}
        self.metrics = TritonMetrics({"model": args["model_name"],
                                      "version": args["model_version"]})
        self._ids = itertools.count()
        self._deltas: queue.SimpleQueue = queue.SimpleQueue()
        self._live: dict[str, _Live] = {}
        self._live_lock = threading.Lock()  # _live: added by execute(), removed by the sender
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

    # ---- Triton's thread -----------------------------------------------------------------

    def _accept(self, request) -> None:
        sender = request.get_response_sender()
        tensors = {}
        for name in INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                tensors[name] = tensor.as_numpy()
        try:
            inputs = parse_inputs(tensors)
        except ValueError as e:
            _send_final(sender, pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
            return
        triton_id = request.request_id()
        if inputs.cancel:
            with self._live_lock:
                targets = [rid for rid, live in self._live.items() if live.triton_id == triton_id]
            for rid in targets:
                self.loop.abort(rid)
            empty_id = self.text_ids[True].empty_id
            _send_final(sender, _response([empty_id], StreamDelta(request_id=triton_id, finished=True,
                                                                  finish_reason="abort")))
            return
        request_id = f"{triton_id or 'request'}#{next(self._ids)}"
        skip = inputs.params.skip_special_tokens
        live = _Live(sender, triton_id, inputs.stream, skip, time.monotonic())
        if not (inputs.stream or inputs.exclude_input_in_output):  # vllm_backend's default
            live.collected = self.text_ids[skip].prompt_ids(inputs.prompt_token_ids)
        with self._live_lock:
            self._live[request_id] = live
        self.loop.submit(request_id, inputs.prompt_token_ids, inputs.params,
                         sink=self._deltas.put)

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
            for delta in coalesce(batch):
                try:
                    self._send(delta)
                except Exception:  # one bad send must not stop the others' responses
                    logger.exception("sending a response of %s failed", delta.request_id)
            now = time.monotonic()
            if now - last_stats >= STATS_EVERY_S:
                self.metrics.update(self.loop.stats())
                last_stats = now
            if now - last_poll >= CANCEL_POLL_S:
                self._poll_cancelled()
                last_poll = now

    def _send(self, delta: StreamDelta) -> None:
        with self._live_lock:
            live = self._live.get(delta.request_id)
            if live is not None and delta.finished:
                del self._live[delta.request_id]
        if live is None:
            return
        now = time.monotonic()
        if delta.token_ids:
            if live.last_token_time is None:
                self.metrics.ttft.observe(now - live.arrival)
            else:
                self.metrics.itl.observe(now - live.last_token_time)
            live.last_token_time = now
        if delta.finished:
            self.metrics.e2e.observe(now - live.arrival)
        if live.cancelled:
            if delta.finished:
                _send_final(live.sender, None)
            return
        if delta.error is not None:
            _send_final(live.sender, pb_utils.InferenceResponse(
                error=pb_utils.TritonError(delta.error, pb_utils.TritonError.INVALID_ARG)))
            return
        text_ids = self.text_ids[live.skip_special_tokens]
        ids = text_ids.ids_for(live.pending, delta.token_ids, delta.text)
        if not live.stream:
            live.collected.extend(ids)
            if not delta.finished:
                return
            ids = live.collected
        elif not ids and not delta.finished:
            return
        response = _response(ids or [text_ids.empty_id], delta)
        if delta.finished:
            _send_final(live.sender, response)
        else:
            live.sender.send(response)

    def _poll_cancelled(self) -> None:
        with self._live_lock:
            items = list(self._live.items())
        for request_id, live in items:
            if not live.cancelled and live.sender.is_cancelled():
                live.cancelled = True
                self.loop.abort(request_id)


def _response(ids: list[int], delta: StreamDelta):
    reason = (delta.finish_reason or "") if delta.finished else ""
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("output_ids", np.asarray([ids], dtype=np.int64)),
        pb_utils.Tensor("finish_reason", np.asarray([[reason.encode()]], dtype=np.object_)),
        pb_utils.Tensor("num_input_tokens", np.asarray([[delta.num_prompt_tokens]], np.int32)),
        pb_utils.Tensor("num_output_tokens", np.asarray([[delta.num_output_tokens]], np.int32)),
    ])


def _send_final(sender, response) -> None:
    try:
        if response is None:
            sender.send(flags=FINAL)
        else:
            sender.send(response, flags=FINAL)
    except Exception:  # the client is gone; nothing left to tell it
        logger.warning("final response not delivered", exc_info=True)

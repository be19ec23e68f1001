"""ONNX Runtime as a Triton Python-based backend, for servers without the native one.

The tritonserver of the `nvidia-pytriton` wheel has no onnxruntime backend. A model whose config
says `backend: "onnxruntime"` then loads `<backend_dir>/onnxruntime/model.py`, this file, and
runs the same model.onnx and config.pbtxt the NGC container runs natively:

- the model: `<model_repository>/<version>/<default_model_filename or model.onnx>`;
- custom ops: `model_operations { op_library_filename }` when that file exists, else the
  installed onnxruntime-extensions library;
- dynamic batching: the requests of one execute() call are concatenated along the batch
  dimension and run once per group whose other dimensions match ([B, 1] strings always do;
  [B, n] ids group by n; nothing is padded), and the outputs are split back per request;
- BYTES tensors come as numpy object arrays of bytes: str for ONNX Runtime (an input that is
  not UTF-8 fails its request, naming the input), bytes back;
- `parameters { key: "intra_op_thread_count" }` as the native backend reads it;
- `parameters { key: "max_string_bytes" }` (ours; the native backend ignores it): a BYTES item
  longer than that fails its request, naming the input, before ONNX Runtime sees it (a 10 MB
  prompt kept the one preprocessing instance busy 3-5 s tokenizing; the front door refuses
  long prompts for HTTP clients, this does it for gRPC clients of Triton's own port).

An error (a bad input, a failed run) is answered per request as a TritonError.
"""
from __future__ import annotations

import os

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from pagedllm_triton.stub_watchdog import exit_with_server


def _to_str(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES tensor (object array of bytes) as the object array of str ONNX Runtime takes.

    (ONNX Runtime would str() a bytes item: "b'...'". A fixed-width numpy bytes array it reads
    as C strings, past an item that fills its width: no shortcut there.) Raises ValueError
    naming the input for an item that is not UTF-8.
    """
    items = array.ravel().tolist()
    out = np.empty(len(items), dtype=object)
    try:
        out[:] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in items]
    except UnicodeDecodeError as e:
        raise ValueError(f"input {name!r} is not UTF-8 text: {e}") from None
    return out.reshape(array.shape)


def _to_bytes(array: np.ndarray) -> np.ndarray:
    """ONNX Runtime's string output (object array of str) as a BYTES tensor."""
    return np.array([x.encode("utf-8") if isinstance(x, str) else x for x in array.flat],
                    dtype=object).reshape(array.shape)


def _op_library(config: dict) -> str:
    """The custom-op library: the config's op_library_filename if it exists, else the wheel's."""
    names = (config.get("model_operations") or {}).get("op_library_filename") or []
    for name in [names] if isinstance(names, str) else names:
        if os.path.isfile(name):
            pb_utils.Logger.log_info(f"onnxruntime backend: custom ops from {name} (config)")
            return name
    # NOTE: importing it sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in os.environ (for the
    # processes this one starts); put back as it was.
    before = os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
    import onnxruntime_extensions

    if before is None:
        os.environ.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    else:
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = before
    path = onnxruntime_extensions.get_library_path()
    pb_utils.Logger.log_info(f"onnxruntime backend: custom ops from {path} (onnxruntime_"
                             f"extensions; config's {names or 'none'} not found)")
    return path


class TritonPythonModel:
    """Runs one model.onnx with ONNX Runtime (CPU) for Triton."""

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(i["name"], i["data_type"] == "TYPE_STRING")
                       for i in config.get("input", [])]
        self.outputs = [(o["name"], o["data_type"] == "TYPE_STRING")
                        for o in config.get("output", [])]
        self.output_names = [name for name, _ in self.outputs]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], str(args["model_version"]), filename)
        options = ort.SessionOptions()
        options.register_custom_ops_library(_op_library(config))
        parameters = config.get("parameters") or {}
        threads = parameters.get("intra_op_thread_count")
        if threads:
            options.intra_op_num_threads = int(threads["string_value"])
        limit = parameters.get("max_string_bytes")
        self.max_string_bytes = int(limit["string_value"]) if limit else None
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        exit_with_server()
        pb_utils.Logger.log_info(f"onnxruntime backend: loaded {path} (ONNX Runtime "
                                 f"{ort.__version__}, intra_op_num_threads "
                                 f"{options.intra_op_num_threads or 'default'})")

    def _read(self, request) -> dict[str, np.ndarray]:
        """The request's inputs as ONNX Runtime takes them (BYTES: object arrays of str)."""
        feeds = {}
        for name, is_string in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            array = tensor.as_numpy()
            if is_string and self.max_string_bytes is not None:
                longest = max((len(x) for x in array.flat), default=0)
                if longest > self.max_string_bytes:
                    raise ValueError(f"input {name!r} holds {longest} bytes, more than this "
                                     f"server takes ({self.max_string_bytes})")
            feeds[name] = _to_str(array, name) if is_string else array
        return feeds

    def _merge(self, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The inputs of requests that share their non-batch shapes, as one batch."""
        if len(feeds) == 1:
            return feeds[0]
        return {name: np.concatenate([f[name] for f in feeds]) for name, _ in self.inputs}

    def _split(self, results: list[np.ndarray], feeds: list[dict]) -> list[list]:
        """The outputs of one run, per request (views: no copy)."""
        per_request = [[] for _ in feeds]
        if self.batched and len(feeds) > 1:
            first, bounds, end = self.inputs[0][0], [], 0
            for f in feeds:
                bounds.append((end, end + len(f[first])))
                end = bounds[-1][1]
        else:
            bounds = [(None, None)]
        for (name, is_string), result in zip(self.outputs, results):
            if is_string:
                result = _to_bytes(result)
            for tensors, (lo, hi) in zip(per_request, bounds):
                tensors.append(pb_utils.Tensor(name, result if lo is None else result[lo:hi]))
        return per_request

    def _run(self, feeds: list[dict[str, np.ndarray]]) -> list[list]:
        """One session.run for requests whose inputs share their non-batch shapes."""
        return self._split(self.session.run(self.output_names, self._merge(feeds)), feeds)

    def execute(self, requests: list) -> list:
        responses = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        feeds = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                feeds[i] = self._read(request)
            except Exception as e:  # a bad request fails alone
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
                continue
            # NOTE: without a batch dimension (max_batch_size 0) every request runs alone.
            key = tuple(v.shape[1:] for v in feeds[i].values()) if self.batched else (i,)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            self._respond(members, feeds, responses)
        return responses

    def _respond(self, members: list[int], feeds: list, responses: list) -> None:
        """Runs one group; when it fails, each request alone, so one bad request fails alone."""
        try:
            outputs = self._run([feeds[i] for i in members])
        except Exception as e:
            if len(members) > 1:
                for i in members:
                    self._respond([i], feeds, responses)
            else:
                responses[members[0]] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"onnxruntime: {e}"))
            return
        for i, tensors in zip(members, outputs):
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.session = None

"""A stand-in for Triton's `triton_python_backend_utils`: model.py files tested without a server.

Covers what our backends use: Tensor, InferenceResponse, TritonError, get_input_tensor_by_name,
get_output_config_by_name, triton_string_to_numpy, Logger. Requests are `FakeRequest`s built from
numpy arrays. `install()` puts this module in sys.modules under the real name, so a model.py
imported afterwards gets it.
"""
from __future__ import annotations

import sys
import types

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

_NUMPY = {"TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_INT8": np.int8,
          "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
          "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
          "TYPE_STRING": np.object_}


class Tensor:
    """A named numpy array, as pb_utils.Tensor."""

    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError(Exception):
    """pb_utils.TritonError: a message (and a code) that becomes the response's error."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, \
        CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self._message, self._code = message, code

    def code(self) -> int:
        return self._code

    def message(self) -> str:
        return self._message


class InferenceResponse:
    """pb_utils.InferenceResponse: output tensors, or an error."""

    def __init__(self, output_tensors: list[Tensor] | None = None,
                 error: TritonError | None = None):
        self._tensors, self._error = list(output_tensors or []), error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def as_dict(self) -> dict[str, np.ndarray]:
        """Test helper: {output name: array}."""
        return {t.name(): t.as_numpy() for t in self._tensors}


class FakeRequest:
    """A request carrying the given input arrays (BYTES as object arrays of bytes)."""

    def __init__(self, inputs: dict[str, np.ndarray], request_id: str = ""):
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
        self._id = request_id

    def request_id(self) -> str:
        return self._id


def get_input_tensor_by_name(request: FakeRequest, name: str) -> Tensor | None:
    return request.inputs.get(name)


def _config_by_name(model_config: dict, key: str, name: str) -> dict:
    return next((c for c in model_config.get(key, []) if c["name"] == name), {})


def get_input_config_by_name(model_config: dict, name: str) -> dict:
    return _config_by_name(model_config, "input", name)


def get_output_config_by_name(model_config: dict, name: str) -> dict:
    return _config_by_name(model_config, "output", name)


def triton_string_to_numpy(data_type: str):
    return _NUMPY[data_type]


class Logger:
    """pb_utils.Logger; every message is kept in `messages` as (level, text)."""

    messages: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, text: str) -> None:
        cls.messages.append(("info", text))

    @classmethod
    def log_warn(cls, text: str) -> None:
        cls.messages.append(("warn", text))

    @classmethod
    def log_error(cls, text: str) -> None:
        cls.messages.append(("error", text))

    @classmethod
    def log_verbose(cls, text: str) -> None:
        cls.messages.append(("verbose", text))


def install() -> types.ModuleType:
    """Makes `import triton_python_backend_utils` return this module; returns it."""
    module = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = module
    return module

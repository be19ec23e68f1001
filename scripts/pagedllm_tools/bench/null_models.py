"""Do-nothing stand-ins for a served model: the ceiling of what dynamic batching can show.

`python -m pagedllm_tools.bench.perf_analyzer preprocessing --null onnx|python` measures the tokenizer's config with
the tokenizer taken out, to separate the model's cost from the server's:

- `onnx`: the model's `model.onnx` is replaced by a graph that answers without work
  (Shape -> ConstantOfShape for every output, a [B, 1] tensor of ones of its type). The config and
  the backend (backends/onnxruntime, or the native one) are untouched: what remains is the serving
  path's own cost per request and per call.
- `python`: the model becomes a plain Triton Python model (`backend: "python"`) that reads its
  inputs and answers constant tensors: the Python backend's floor, without any code of ours.

Batching can only win what a call costs beyond its requests; with the model's work gone, the
ratio measured here bounds the ratio any real model can reach through the same server.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pagedllm_triton.serving import model_configs

NULL_PYTHON_MODEL = '''\
"""A do-nothing model (pagedllm_tools.bench.null_models): reads its inputs, answers constant tensors."""
import os
import site
import sys

# NOTE: as in backends/onnxruntime: without the launcher's paths, the stub's embedded Python
# imports another numpy, and reading a BYTES input then fails in deserialize_bytes_tensor.
_stub_path = list(sys.path)
for _p in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_p)
sys.path[:] = [p for p in sys.path if p not in _stub_path] + _stub_path

import json  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]))
                        for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            n = 1
            for name in self.inputs:
                n = len(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ones((n, 1), dtype)) for name, dtype in self.outputs]))
        return responses
'''


def null_onnx(input_names: list[str], outputs: list[tuple[str, str]]):
    """An ONNX graph whose every output is ones of its config type shaped like the first input
    ([B, 1]). `outputs`: (name, config data_type) pairs, e.g. ("input_ids", "TYPE_INT64")."""
    from onnx import TensorProto, helper

    first = input_names[0]
    nodes = [helper.make_node("Shape", [first], ["batch_shape"])]
    types = [getattr(TensorProto, data_type.removeprefix("TYPE_")) for _, data_type in outputs]
    for (name, _), onnx_type in zip(outputs, types):
        nodes.append(helper.make_node(
            "ConstantOfShape", ["batch_shape"], [name],
            value=helper.make_tensor(f"{name}_value", onnx_type, [1], [1])))
    inputs = [helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 1])
              for name in input_names]
    outputs = [helper.make_tensor_value_info(name, onnx_type, ["batch", 1])
               for (name, _), onnx_type in zip(outputs, types)]
    model = helper.make_model(helper.make_graph(nodes, "null", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loads in ONNX Runtime 1.19 (the NGC 24.10 container) too
    return model


def config_tensors(config) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, data_type) of the input and of the output tensors of a parsed config.pbtxt."""
    def names(tensors):
        return [(t.name, model_configs.model_config_pb2.DataType.Name(t.data_type)) for t in tensors]
    return names(config.input), names(config.output)


def make_null(model_dir: Path, kind: str) -> None:
    """Turns the served model in `model_dir` (config.pbtxt, 1/) into the `kind` stand-in."""
    cfg = model_dir / "config.pbtxt"
    config = model_configs.load(cfg)
    version = model_dir / "1"
    if version.is_symlink():  # never delete through a link into the source repository
        version.unlink()
    elif version.exists():
        shutil.rmtree(version)
    version.mkdir()
    if kind == "onnx":
        import onnx

        inputs, outputs = config_tensors(config)
        onnx.save(null_onnx([name for name, _ in inputs], outputs), str(version / "model.onnx"))
    elif kind == "python":
        config.backend = "python"
        config.ClearField("model_operations")
        model_configs.save(config, cfg)
        (version / "model.py").write_text(NULL_PYTHON_MODEL)
    else:
        raise ValueError(f"null model kind must be 'onnx' or 'python', not {kind!r}")

"""backends/onnxruntime/model.py (ONNX Runtime as a Python-based backend) with a fake pb_utils.

No server: fake_pb_utils stands in for triton_python_backend_utils, and each test builds a small
model repository (the tokenizer models of the default model, and tiny numeric graphs).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import fake_pb_utils
from pagedllm.tokenizer import Tokenizer
from pagedllm_tools import ROOT
from pagedllm_triton.serving import tokenizer_onnx as ex

DEFAULT_MODEL = ROOT / "models" / "default"


def _load_backend():
    pb_utils = fake_pb_utils.install()
    return importlib.import_module("pagedllm_triton.onnx_model"), pb_utils


BACKEND, PB = _load_backend()


def _io(name: str, data_type: str, dims: list[int]) -> dict:
    return {"name": name, "data_type": data_type, "dims": dims}


def _instance(model_dir: Path, config: dict, filename: str = "model.onnx",
              model: onnx.ModelProto | None = None):
    """Writes `model` to <model_dir>/1/<filename> and initializes the backend on it."""
    if model is not None:
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(model_dir / "1" / filename))
    instance = BACKEND.TritonPythonModel()
    instance.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir),
                         "model_version": "1", "model_name": config["name"],
                         "model_instance_kind": "CPU", "model_instance_name": "x_0"})
    return instance


def _count_runs(instance) -> list:
    """Wraps the instance's session so each run's batch sizes are recorded."""
    calls, session = [], instance.session

    class Counting:
        def run(self, names, feeds):
            calls.append({k: v.shape for k, v in feeds.items()})
            return session.run(names, feeds)

    instance.session = Counting()
    return calls


@pytest.fixture(scope="module")
def tokenizer_repo(tmp_path_factory):
    """(repo dir, Tokenizer, spec): preprocessing/1 and postprocessing/1 of the default model."""
    repo = tmp_path_factory.mktemp("repo")
    spec = ex.export(DEFAULT_MODEL, repo / "preprocessing" / "1" / "model.onnx",
                     repo / "postprocessing" / "1" / "model.onnx")
    return repo, Tokenizer.from_dir(DEFAULT_MODEL), spec


PRE_CONFIG = {"name": "preprocessing", "backend": "onnxruntime", "max_batch_size": 64,
              "input": [_io("text_input", "TYPE_STRING", [1])],
              "output": [_io("input_ids", "TYPE_INT64", [-1]),
                         _io("input_lengths", "TYPE_INT64", [1])],
              "model_operations": {"op_library_filename": ["/nonexistent/libortextensions.so"]}}
POST_CONFIG = {"name": "postprocessing", "backend": "onnxruntime", "max_batch_size": 64,
               "input": [_io("output_ids", "TYPE_INT64", [-1, -1])],
               "output": [_io("text_output", "TYPE_STRING", [-1])]}


def _texts(*texts: str) -> fake_pb_utils.FakeRequest:
    return fake_pb_utils.FakeRequest(
        {"text_input": np.array([[t.encode()] for t in texts], dtype=object)})


def test_preprocessing_batches_requests_into_one_run(tokenizer_repo):
    repo, tokenizer, _ = tokenizer_repo
    instance = _instance(repo / "preprocessing", PRE_CONFIG)
    calls = _count_runs(instance)
    groups = [["Hello world"], [" a", "日本語 😀", ""], ["x" * 40], ["<|endoftext|> b"]]
    responses = instance.execute([_texts(*g) for g in groups])
    assert calls == [{"text_input": (6, 1)}]  # one run for the whole dynamic batch
    for texts, response in zip(groups, responses):
        assert not response.has_error()
        out = response.as_dict()
        assert out["input_ids"].shape[0] == len(texts) and out["input_lengths"].shape == (
            len(texts), 1)
        for text, row, n in zip(texts, out["input_ids"], out["input_lengths"][:, 0]):
            assert row[:n].tolist() == tokenizer.encode(text)


def test_missing_op_library_falls_back_to_onnxruntime_extensions(tokenizer_repo):
    import onnxruntime_extensions

    repo, _, _ = tokenizer_repo
    PB.Logger.messages.clear()
    _instance(repo / "preprocessing", PRE_CONFIG)
    logged = " ".join(text for _, text in PB.Logger.messages)
    assert onnxruntime_extensions.get_library_path() in logged and "not found" in logged
    PB.Logger.messages.clear()
    config = dict(PRE_CONFIG, model_operations={
        "op_library_filename": [onnxruntime_extensions.get_library_path()]})
    _instance(repo / "preprocessing", config)
    assert any("(config)" in text for _, text in PB.Logger.messages)


def test_postprocessing_groups_requests_by_id_width(tokenizer_repo):
    repo, tokenizer, spec = tokenizer_repo
    instance = _instance(repo / "postprocessing", POST_CONFIG)
    calls = _count_runs(instance)
    texts = [[" Hello", " wörld"], ["日本"], [" a", "b"], ["\n\t x"], ["😀"], ["c"], ["d"], ["e", "f"]]
    rows = [[tokenizer.encode(t) for t in group] for group in texts]
    width = [max(map(len, r)) for r in rows]
    # One request per group: its completions are the rows, [1, n, width].
    requests = [fake_pb_utils.FakeRequest({"output_ids": np.array(
        [[ids + [spec.pad_id] * (w - len(ids)) for ids in r]], dtype=np.int64)})
        for r, w in zip(rows, width)]
    responses = instance.execute(requests)
    requests_of_shape: dict[tuple[int, int], int] = {}
    for r, w in zip(rows, width):
        requests_of_shape[(len(r), w)] = requests_of_shape.get((len(r), w), 0) + 1
    assert sorted(c["output_ids"] for c in calls) == sorted(
        (b, n, w) for (n, w), b in requests_of_shape.items())
    assert len(calls) < len(requests)  # requests of one shape shared a run
    for group, response in zip(texts, responses):
        out = response.as_dict()["text_output"]
        assert out.shape == (1, len(group)) and all(isinstance(x, bytes) for x in out.flat)
        assert [x.decode() for x in out[0]] == group


def test_a_bad_request_fails_alone(tokenizer_repo):
    repo, tokenizer, _ = tokenizer_repo
    instance = _instance(repo / "preprocessing", PRE_CONFIG)
    bad_utf8 = fake_pb_utils.FakeRequest({"text_input": np.array([[b"\xff\xfe"]], dtype=object)})
    missing = fake_pb_utils.FakeRequest({})
    responses = instance.execute([_texts("ok"), bad_utf8, missing, _texts("fine too")])
    assert [r.has_error() for r in responses] == [False, True, True, False]
    assert "input 'text_input' is not UTF-8" in responses[1].error().message()
    assert "text_input" in responses[2].error().message()
    out = responses[3].as_dict()
    assert out["input_ids"][0, :out["input_lengths"][0, 0]].tolist() == tokenizer.encode(
        "fine too")


def _gather_model() -> onnx.ModelProto:
    """y[b] = table[idx[b]] * scale[b]: a run fails when any idx is out of range."""
    table = onnx.numpy_helper.from_array(np.arange(10, dtype=np.float32) * 10, "table")
    nodes = [helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0),
             helper.make_node("Mul", ["picked", "scale"], ["y"])]
    graph = helper.make_graph(
        nodes, "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["b", 1]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["b", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1])], initializer=[table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


GATHER_CONFIG = {"name": "gather", "backend": "onnxruntime", "max_batch_size": 8,
                 "default_model_filename": "gather.onnx",
                 "input": [_io("idx", "TYPE_INT64", [1]), _io("scale", "TYPE_FP32", [1])],
                 "output": [_io("y", "TYPE_FP32", [1])],
                 "parameters": {"intra_op_thread_count": {"string_value": "1"}}}


def _gather_request(idx: list[int], scale: float = 1.0) -> fake_pb_utils.FakeRequest:
    return fake_pb_utils.FakeRequest({
        "idx": np.array([[i] for i in idx], dtype=np.int64),
        "scale": np.full((len(idx), 1), scale, dtype=np.float32)})


def test_numeric_inputs_batch_and_a_failed_run_is_retried_per_request(tmp_path):
    instance = _instance(tmp_path / "gather", GATHER_CONFIG, "gather.onnx", _gather_model())
    calls = _count_runs(instance)
    responses = instance.execute([_gather_request([1, 2]), _gather_request([3], 2.0)])
    assert len(calls) == 1
    assert responses[0].as_dict()["y"].tolist() == [[10.0], [20.0]]
    assert responses[1].as_dict()["y"].tolist() == [[60.0]]
    calls.clear()
    responses = instance.execute([_gather_request([1]), _gather_request([99]),
                                  _gather_request([2])])
    assert len(calls) == 4  # the batch failed, then each request alone
    assert [r.has_error() for r in responses] == [False, True, False]
    assert responses[1].error().message().startswith("onnxruntime:")
    assert responses[2].as_dict()["y"].tolist() == [[20.0]]


def test_without_a_batch_dimension_each_request_runs_alone(tmp_path):
    config = dict(GATHER_CONFIG, max_batch_size=0)
    instance = _instance(tmp_path / "gather", config, "gather.onnx", _gather_model())
    calls = _count_runs(instance)
    responses = instance.execute([_gather_request([1]), _gather_request([2])])
    assert len(calls) == 2
    assert [r.as_dict()["y"].tolist() for r in responses] == [[[10.0]], [[20.0]]]
    instance.finalize()

"""Pure functions of the load generator and the perf_analyzer tool: statistics, input data.

No server is needed: these run in the CPU test suite.
"""
from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest

from pagedllm_clients import load
from pagedllm_clients import workloads
from pagedllm_tools import ROOT
from pagedllm_tools.bench import null_models, perf_analyzer
from pagedllm_triton.serving import model_configs


def test_percentile_matches_numpy():
    rng = random.Random(0)
    for size in (1, 2, 5, 100, 1001):
        xs = [rng.random() for _ in range(size)]
        for q in (0, 1, 50, 90, 99, 100):
            assert load.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert math.isnan(load.percentile([], 50))
    with pytest.raises(ValueError):
        load.percentile([1.0], 101)


def test_ttft_and_itl_from_running_counts():
    # sent at 10.0; responses carry running token counts 1, 3, 4 (the second brings 2 tokens)
    r = load.RequestRecord(0, start=10.0, times=[10.5, 10.9, 11.0], counts=[1, 3, 4])
    assert r.ttft() == pytest.approx(0.5)
    assert r.itls() == pytest.approx([0.2, 0.2, 0.1])
    assert r.num_output_tokens == 4
    empty = load.RequestRecord(1, start=0.0)
    assert empty.ttft() is None and empty.itls() == []


def test_summarize_counts_tokens_and_errors():
    ok = load.RequestRecord(0, start=0.0, times=[0.1, 0.2], counts=[1, 2], num_input_tokens=5)
    bad = load.RequestRecord(1, start=0.0, error="boom")
    s = load.summarize([ok, bad], wall_s=2.0)
    assert s["output_tokens"] == 2 and s["output_tok_s"] == pytest.approx(1.0)
    assert s["num_errors"] == 1 and s["errors"] == ["boom"]
    assert s["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert s["itl_ms"]["mean"] == pytest.approx(100.0)


def test_perf_analyzer_input_data_for_the_ensemble():
    w = workloads.make_workload("serve", 3, 0, 0.1)
    w.prompts = ["a", "b", "c"]
    data = perf_analyzer.ensemble_input_data(w)["data"]
    assert len(data) == 3
    assert data[1]["text_input"] == {"content": ["b"], "shape": [1]}
    assert data[1]["max_tokens"]["content"] == [w.output_lens[1]]
    assert json.loads(data[0]["sampling_parameters"]["content"][0])["ignore_eos"] is True


def test_profile_export_parsing(tmp_path):
    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 2}, "requests": [
        {"timestamp": 1_000_000_000, "response_timestamps": [1_100_000_000, 1_150_000_000,
                                                             1_160_000_000],
         "response_outputs": [{"num_output_tokens": [1]}, {"num_output_tokens": [1]}, {}]}]}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    [level] = perf_analyzer.parse_profile_export(path)
    assert level["concurrency"] == 2 and level["output_tokens"] == 2
    assert level["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert level["itl_ms"]["p50"] == pytest.approx(50.0)


def test_null_models_answer_without_work(tmp_path):
    """The do-nothing stand-ins keep the config's tensors: ORT runs the null graph on a batch."""
    import onnxruntime as ort

    cfg = (ROOT / "model_repository" / "preprocessing" / "config.pbtxt").read_text()
    src = tmp_path / "src"
    (src / "1").mkdir(parents=True)
    (src / "config.pbtxt").write_text(cfg)
    (src / "1" / "model.onnx").write_bytes(b"the tokenizer")
    assert null_models.config_tensors(model_configs.load(src / "config.pbtxt")) == (
        [("text_input", "TYPE_STRING")],
        [("input_ids", "TYPE_INT64"), ("input_lengths", "TYPE_INT64"), ("text_has_nul", "TYPE_BOOL")])
    for kind in ("onnx", "python"):
        model = tmp_path / kind
        shutil.copytree(src, model)
        null_models.make_null(model, kind)
        files = sorted(p.name for p in (model / "1").iterdir())
        text = (model / "config.pbtxt").read_text()
        if kind == "onnx":
            assert files == ["model.onnx"] and text == cfg
            session = ort.InferenceSession(str(model / "1" / "model.onnx"))
            ids, lengths, has_nul = session.run(
                None, {"text_input": np.array([["a"], ["bc"], ["d"]], dtype=object)})
            assert ids.shape == lengths.shape == has_nul.shape == (3, 1)
            assert ids.dtype == np.int64 and has_nul.dtype == np.bool_
        else:
            assert files == ["model.py"]
            config = model_configs.load(model / "config.pbtxt")
            assert config.backend == "python" and not config.HasField("model_operations")
            assert config.dynamic_batching == model_configs.load(src / "config.pbtxt").dynamic_batching
            compile((model / "1" / "model.py").read_text(), "model.py", "exec")
    assert (src / "1" / "model.onnx").read_bytes() == b"the tokenizer"  # the source untouched
    with pytest.raises(ValueError, match="'onnx' or 'python'"):
        null_models.make_null(tmp_path / "onnx", "tflite")


def test_stop_strings_typed_in_a_shell_are_unescaped():
    from pagedllm_clients.generate import unescape
    assert unescape(r"\n\n") == "\n\n"
    assert unescape("é" + r"\t" + "日本") == "é\t日本"
    assert unescape("plain ###") == "plain ###"
    assert unescape(r"a\\n") == r"a\n"  # a doubled backslash stays one backslash


def test_peer_workloads_keep_their_draws_and_ranges():
    """A and B must meet the very prompts of the vLLM figures recorded on 2026-11-30 (their draw
    order is pinned by these sums); C and D keep to the issue's ranges."""
    from pagedllm_tools.bench.peer import WORKLOADS

    prompts, outputs = workloads.peer_workload(*WORKLOADS["A_256_seed7"])
    assert (len(prompts), len(prompts[0]), prompts[0][:3]) == (256, 431, [2471, 6468, 791])
    assert (sum(map(len, prompts)), sum(outputs)) == (137772, 138253)
    prompts, outputs = workloads.peer_workload(*WORKLOADS["C_long_128_seed9"])
    assert len(prompts) == 128 and all(2000 <= len(p) <= 3500 for p in prompts)
    assert all(64 <= o <= 256 for o in outputs) and max(max(p) for p in prompts) < 10000
    prompts, outputs = workloads.peer_workload(*WORKLOADS["D_single_seed10"])
    assert [len(p) for p in prompts] == [512] and outputs == [512]

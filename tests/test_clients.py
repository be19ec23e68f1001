"""Pure functions of the clients and the perf_analyzer script: workloads, statistics, configs.

No server is needed: these run in the CPU test suite.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients"))
sys.path.insert(0, str(ROOT / "scripts"))

import load  # noqa: E402


def test_nano_lengths_follow_the_design():
    prompts, outputs = load.nano_lengths()
    assert len(prompts) == len(outputs) == 256
    assert all(100 <= n <= 1024 for n in prompts + outputs)
    assert load.nano_lengths() == (prompts, outputs)  # seed 0: the same on every run
    assert load.nano_lengths(seed=1) != (prompts, outputs)


def test_nano_lengths_match_the_engine_benchmark():
    import bench_engine

    assert load.nano_lengths(256, 0) == bench_engine.nano_lengths(256, 0)


def test_scale_shrinks_both_lengths():
    prompts, outputs = load.nano_lengths(64, 0, scale=0.25)
    full_p, full_o = load.nano_lengths(64, 0)
    assert prompts == [max(1, round(n * 0.25)) for n in full_p]
    assert outputs == [max(1, round(n * 0.25)) for n in full_o]
    with pytest.raises(ValueError, match="scale"):
        load.nano_lengths(4, 0, scale=0)
    with pytest.raises(ValueError, match="num_requests"):
        load.nano_lengths(0)


def test_prompt_ids_stay_below_the_limit_and_skip_excluded_ids():
    ids = load.prompt_token_ids([50, 7], vocab_size=20000, excluded_ids=[0, 1, 2], seed=0)
    assert [len(x) for x in ids] == [50, 7]
    flat = [i for x in ids for i in x]
    assert max(flat) < 10000 and not {0, 1, 2} & set(flat)
    small = load.prompt_token_ids([200], vocab_size=300, seed=0)[0]
    assert max(small) < 300


def test_prompt_texts_are_deterministic_and_about_the_right_length():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(ROOT / "models" / "default" / "tokenizer.json"))
    lengths = [100, 37, 512]
    texts = load.prompt_texts(tok, lengths, seed=0)
    assert texts == load.prompt_texts(tok, lengths, seed=0)
    for text, n in zip(texts, lengths):
        got = len(tok.encode(text, add_special_tokens=False).ids)
        assert abs(got - n) <= max(2, n // 20), (got, n)


def test_prompt_texts_hold_no_nul():
    """The ONNX tokenizer refuses a NUL."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(ROOT / "models" / "default" / "tokenizer.json"))
    texts = [t for seed in range(60, 160) for t in load.prompt_texts(tok, [30, 19, 57], seed=seed)]
    assert not [t for t in texts if "\x00" in t]


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


def test_poisson_arrivals_have_the_asked_rate():
    times = load.poisson_arrivals(4000, rate=8.0, seed=0)
    assert times[0] == 0.0 and times == sorted(times)
    assert 4000 / times[-1] == pytest.approx(8.0, rel=0.05)
    with pytest.raises(ValueError):
        load.poisson_arrivals(3, 0)


def test_fresh_prompts_keep_the_lengths():
    """Runs compared with each other get new prompt text (a server caches prefixes it has
    served) over the same lengths; a prompt seed repeats its text."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(load.DEFAULT_MODEL_DIR / "tokenizer.json"))
    w = load.make_workload("nano", 16, 0, 0.1)
    a, b, a2 = (w.with_prompts(load.DEFAULT_MODEL_DIR, seed) for seed in (7, 8, 7))
    assert a.prompt_lens == b.prompt_lens == w.prompt_lens and a.output_lens == w.output_lens
    assert a.prompts == a2.prompts
    assert all(x != y for x, y in zip(a.prompts, b.prompts))
    assert w.prompts == [] and a.describe()["prompt_seed"] == 7
    for text, n in zip(b.prompts, b.prompt_lens):  # about the target length, as documented
        assert abs(len(tok.encode(text, add_special_tokens=False).ids) - n) <= max(2, n // 10)


def test_perf_analyzer_input_data_for_the_ensemble():
    import perf_analyzer

    w = load.make_workload("serve", 3, 0, 0.1)
    w.prompts = ["a", "b", "c"]
    data = perf_analyzer.ensemble_input_data(w)["data"]
    assert len(data) == 3
    assert data[1]["text_input"] == {"content": ["b"], "shape": [1]}
    assert data[1]["max_tokens"]["content"] == [w.output_lens[1]]
    assert json.loads(data[0]["sampling_parameters"]["content"][0])["ignore_eos"] is True


def test_strip_dynamic_batching_keeps_the_rest():
    import perf_analyzer

    cfg = ('name: "preprocessing"\nbackend: "onnxruntime"\nmax_batch_size: 64\n'
           'dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 8 ] }\n'
           'instance_group [ { count: 1 kind: KIND_CPU } ]\n'
           'model_operations { op_library_filename: "/x.so" }\n')
    out = perf_analyzer.strip_dynamic_batching(cfg, "preprocessing_nobatch")
    assert "dynamic_batching" not in out
    assert 'name: "preprocessing_nobatch"' in out
    assert "instance_group" in out and "model_operations" in out and "max_batch_size: 64" in out


def test_profile_export_parsing(tmp_path):
    import perf_analyzer

    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 2}, "requests": [
        {"timestamp": 1_000_000_000, "response_timestamps": [1_100_000_000, 1_150_000_000,
                                                             1_160_000_000],
         "response_outputs": [{"num_output_tokens": [1]}, {"num_output_tokens": [2]}, {}]}]}]}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    [level] = perf_analyzer.parse_profile_export(path)
    assert level["concurrency"] == 2 and level["output_tokens"] == 2
    assert level["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert level["itl_ms"]["p50"] == pytest.approx(50.0)


def test_null_models_answer_without_work(tmp_path):
    """The do-nothing stand-ins keep the config's tensors: ORT runs the null graph on a batch."""
    import numpy as np
    import onnxruntime as ort
    import null_models

    cfg = (ROOT / "model_repository" / "preprocessing" / "config.pbtxt").read_text()
    src = tmp_path / "src"
    (src / "1").mkdir(parents=True)
    (src / "config.pbtxt").write_text(cfg)
    (src / "1" / "model.onnx").write_bytes(b"the tokenizer")
    assert null_models.config_tensors(cfg) == (
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
            assert 'backend: "python"' in text and "model_operations" not in text
            compile((model / "1" / "model.py").read_text(), "model.py", "exec")
    assert (src / "1" / "model.onnx").read_bytes() == b"the tokenizer"  # the source untouched
    with pytest.raises(ValueError, match="'onnx' or 'python'"):
        null_models.make_null(tmp_path / "onnx", "tflite")

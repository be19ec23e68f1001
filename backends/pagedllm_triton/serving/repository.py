"""Builds a server's model repository for one model directory: configs, ONNX tokenizer models
and engine.json.

The config.pbtxt files are committed (model_repository/, installed as templates: paths.py) and
do not depend on the model: the tokenizer lives inside the ONNX files and the engine reads
engine.json. Each server builds its own repository from the templates, so two servers never
see each other's files:

    python -m pagedllm_triton.serving.repository --model /path/to/hf_dir --repo DIR
        [--engine-args '{"max_num_seqs": 64}']

which writes, under DIR:
    */config.pbtxt               copied from the templates (unless DIR is the template itself)
    preprocessing/1/model.onnx   tokenizer.json -> ONNX tokenizer (tokenizer_onnx.py)
    postprocessing/1/model.onnx  ONNX detokenizer, plus the pass-through of the llm's other
                                 outputs (finish_reason, logprobs, token counts, cancel_token:
                                 every ensemble response comes whole from this one step)
    llm/engine.json              EngineConfig fields: model path, SERVER_DEFAULTS (device
                                 "auto", cpu_threads 1, strict_max_tokens, max_queue_len 256),
                                 your overrides
    ensemble/1/, llm/1/          the empty version folders Triton wants
    postprocessing/configs/host.pbtxt
                                 on machines with 8+ CPUs: config.pbtxt with more instances
                                 (tritonserver --model-config-name=host picks it;
                                 model_configs.py)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from pagedllm_triton.serving import tokenizer_onnx
from pagedllm_triton.serving.engine_defaults import SERVER_DEFAULTS
from pagedllm_triton.serving.model_configs import write_host_configs
from pagedllm_triton.serving.paths import template_repository

STEPS = ("ensemble", "llm", "preprocessing", "postprocessing")
# The llm's outputs besides output_ids, passed through postprocessing: (name, type, per completion).
PASS_THROUGH = (("finish_reason", TensorProto.STRING, True),
                ("cumulative_logprob", TensorProto.FLOAT, True),
                ("logprobs", TensorProto.STRING, True),
                ("num_input_tokens", TensorProto.UINT32, False),
                ("num_output_tokens", TensorProto.UINT32, True),
                ("cancel_token", TensorProto.STRING, False))


def add_pass_through(model: onnx.ModelProto) -> onnx.ModelProto:
    """Adds inputs llm_<name> -> outputs <name> (Identity) for the llm's per-response fields."""
    graph = model.graph
    for name, dtype, per_completion in PASS_THROUGH:
        shape = ["batch", "n" if per_completion else 1]
        graph.input.append(helper.make_tensor_value_info(f"llm_{name}", dtype, shape))
        graph.output.append(helper.make_tensor_value_info(name, dtype, shape))
        graph.node.append(helper.make_node("Identity", [f"llm_{name}"], [name],
                                           name=f"pass_{name}"))
    onnx.checker.check_model(model)
    return model


def copy_templates(repo: Path) -> None:
    """Copies each step's config.pbtxt from the templates into `repo` (a no-op on the templates)."""
    templates = template_repository()
    if repo.resolve() == templates.resolve():
        return
    for name in STEPS:
        (repo / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(templates / name / "config.pbtxt", repo / name / "config.pbtxt")


def build(model_dir: Path, repo: Path, engine_args: dict) -> None:
    """Fills `repo` for `model_dir`; the llm step's engine.json holds the model's absolute path."""
    model_dir = model_dir.resolve()
    copy_templates(repo)
    for name in STEPS:
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
    pre = repo / "preprocessing" / "1" / "model.onnx"
    post = repo / "postprocessing" / "1" / "model.onnx"
    tokenizer_onnx.export(model_dir, pre, post)
    onnx.save(add_pass_through(onnx.load(str(post))), str(post))
    config = {"model": str(model_dir), **SERVER_DEFAULTS, **engine_args}
    (repo / "llm" / "engine.json").write_text(json.dumps(config, indent=2) + "\n")
    write_host_configs(repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="Hugging Face checkpoint directory")
    parser.add_argument("--repo", type=Path, required=True,
                        help="the repository to fill (created if missing)")
    parser.add_argument("--engine-args", default="{}",
                        help="JSON object of EngineConfig fields, e.g. '{\"max_num_seqs\": 64}'")
    args = parser.parse_args(argv)
    engine_args = json.loads(args.engine_args)
    if not isinstance(engine_args, dict):
        parser.error("--engine-args must be a JSON object")
    if not (args.model / "config.json").exists():
        parser.error(f"{args.model} is not a Hugging Face checkpoint directory (no config.json)")
    build(args.model, args.repo, engine_args)
    print(f"model repository {args.repo} filled for {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

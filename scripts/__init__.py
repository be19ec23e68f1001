"""The project's tools (installed as `pagedllm_tools`): they work on a checkout of the repository.

    serving/   serve (`make serve`), tritonserver (the server from its wheel, its backend
               directory, launch/stop), repository (fill model_repository/ for a model),
               model_configs (config.pbtxt through protobuf), tokenizer_onnx (the ONNX
               tokenizer and detokenizer), watchdog, supervisor, control_plane (the secret
               header on tritonserver's control plane)
    bench/     engine (`make bench-engine`), gpu, serving_gpu, kernels_gpu, perf_analyzer,
               null_models, bf16_agreement
    workloads  the benchmark workloads (`nano`, `serve`, ...), defined once (docs/workloads.md)
    reference_models   tiny random Hugging Face checkpoints and transformers' greedy decode,
               the parity oracle shared by tests and GPU checks
    default_model      rebuilds models/default from scratch (`make model`)

Run one as `python -m pagedllm_tools.<path> --help`, or through its console script
(pyproject.toml: pagedllm-serve, pagedllm-bench-engine, ...).
"""
from __future__ import annotations

from pathlib import Path

# The checkout these tools serve (they read models/, model_repository/ and keep .cache/ there):
# an editable install (`make install`) keeps this folder's parent the repository root.
ROOT = Path(__file__).resolve().parent.parent

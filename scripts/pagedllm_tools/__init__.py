"""The project's developer tools: benchmarks and model building. Not installed, not product.

    bench/     engine (`make bench-engine`), gpu, serving_gpu, kernels_gpu, peer, perf_analyzer,
               soak, null_models, bf16_agreement
    reference_models   tiny random Hugging Face checkpoints and transformers' greedy decode,
               the parity oracle shared by tests and GPU checks
    default_model      rebuilds models/default from scratch (`make model`)
    processes  the process tree below a pid (the soak and the tests that check nothing is left)

Run one from the checkout as `PYTHONPATH=scripts python -m pagedllm_tools.<path> --help` (the
Makefile and pytest put scripts/ on the path). Product code never imports these.
"""
from __future__ import annotations

from pathlib import Path

# The checkout these tools work on (they read models/ and write docs/benchmarks/ there).
ROOT = Path(__file__).resolve().parents[2]

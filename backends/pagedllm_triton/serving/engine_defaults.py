"""The engine settings a server runs with unless told otherwise (llm/engine.json's defaults).

Kept out of repository.py (which writes them) so that the command line (engine_flags.py: the
defaults --help shows) and the pre-flight checks read them without importing onnx.
"""
from __future__ import annotations

# What a server's engine.json holds unless ENGINE_ARGS says otherwise:
# - cpu_threads 1: on CPU the engine shares the machine with Triton's front end and the
#   tokenizer steps; one torch thread left them a core (2-core machine, concurrency 32: 412 vs
#   366 output tok/s through the ensemble). Ignored on CUDA.
# - strict_max_tokens: a max_tokens that cannot fit is an error naming it, not a silent cap.
# - max_queue_len 256: beyond it a request is refused at once ("overloaded, retry later").
SERVER_DEFAULTS = {"device": "auto", "cpu_threads": 1, "strict_max_tokens": True,
                   "max_queue_len": 256}

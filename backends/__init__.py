"""What tritonserver loads (installed as `pagedllm_backends`; nothing here is imported by the engine).

    pagedllm/      the Python-based backend named "pagedllm": the `llm` model's adapter between
                   Triton and the engine package `pagedllm` (model.py is Triton's entry)
    onnxruntime/   ONNX Runtime as a Python-based backend, for a server without the native one
    stub_watchdog  ends our backend stubs when their tritonserver is gone

tritonserver finds each backend as `<backend-directory>/<name>/model.py`
(pagedllm_tools.serving.tritonserver links these folders there) and imports model.py as a
top-level module; model.py imports its siblings through this package.
"""

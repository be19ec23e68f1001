"""pagedllm on Triton Inference Server: the `llm` adapter and the server runtime.

The adapter (what tritonserver runs, through the entry files in backends/pagedllm and
backends/onnxruntime):

    llm_model        the `llm` step: requests in, engine deltas out (TritonPythonModel)
    request_inputs   a request's input tensors -> prompt ids and SamplingParams
    responses        a request's response arrays (ids for the ONNX detokenizer, finish, ...)
    text_ids         ids that decode alone to exactly a delta's new text
    metrics          the pagedllm:* metrics as Triton custom metrics
    onnx_model       ONNX Runtime as a Python-based backend (the wheel's server has no native one)
    stub_watchdog    ends our backend stubs when their tritonserver is gone

The runtime (`serving/`): the launcher behind `make serve` and `pagedllm-serve`, the watchdog
and supervisor, the model repository builder and the ONNX tokenizer export.

The adapter holds no engine logic: it translates between Triton's tensors and the engine's
dataclasses (pagedllm.outputs, pagedllm.sampling_params).
"""

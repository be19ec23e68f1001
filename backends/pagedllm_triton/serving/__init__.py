"""The server runtime: serve (`make serve`, `pagedllm-serve`), tritonserver (the server from its
wheel, its backend directory, launch/stop), repository (a server's own model repository),
model_configs (config.pbtxt through protobuf), tokenizer_onnx (the ONNX tokenizer and
detokenizer), watchdog and supervisor (keep the server serving), shm_regions, paths."""

"""ONNX Runtime as a Triton Python-based backend (model.py); see README.md beside it."""

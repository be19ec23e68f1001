"""What tritonserver loads for a model with `backend: "onnxruntime"` on a server without the
native ONNX Runtime backend (the nvidia-pytriton wheel's): ONNX Runtime run from Python.

Triton's Python backend imports `<backend-directory>/onnxruntime/model.py` as a top-level module and
looks for `TritonPythonModel`; the backend itself is `pagedllm_triton.onnx_model`.

Triton's stub embeds an isolated Python that ignores PYTHONPATH, so the launcher's entries (the
stubs' numpy 1.x, the project's environment and its site-packages) are made site directories
here, ahead of the stub's own path, before the backend is imported. In the NGC container there
are none: the project is installed in the stub's own site-packages.
"""
import os
import site
import sys

_stub_path = list(sys.path)
for _p in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_p)
sys.path[:] = [p for p in sys.path if p not in _stub_path] + _stub_path

from pagedllm_triton.onnx_model import TritonPythonModel  # noqa: E402,F401

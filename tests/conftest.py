"""Shared pytest fixtures.

Model fixtures: tiny random-weight Hugging Face checkpoints, one per supported variant,
built with transformers (the parity oracle) once per session (pagedllm_tools.reference_models).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # NOTE: must run before anything imports triton (it reads the variable once): without a
    # GPU the Triton kernels run in Triton's CPU interpreter (tests/test_kernels.py). The
    # engine is unaffected: CPU tensors always take the torch reference.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pagedllm_tools.reference_models import TINY_ARCHS, make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Every tiny variant, built once per session: {arch: checkpoint dir}."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {arch: make_tiny_checkpoint(arch, root / arch) for arch in TINY_ARCHS}

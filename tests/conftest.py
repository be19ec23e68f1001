"""Shared pytest fixtures.

Model fixtures: tiny random-weight Hugging Face checkpoints, one per supported variant,
built with transformers (the parity oracle) once per session (pagedllm_tools.reference_models,
and pagedllm_tools.family_models for the families beyond Llama).
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

from pagedllm_tools.family_models import FAMILY_ARCHS, make_family_checkpoint  # noqa: E402
from pagedllm_tools.reference_models import TINY_ARCHS, make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Every tiny variant, built once per session: {arch: checkpoint dir}."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {arch: make_tiny_checkpoint(arch, root / arch) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Every tiny family variant beyond Llama (pagedllm_tools.family_models), built once per session."""
    root = tmp_path_factory.mktemp("family_checkpoints")
    return {arch: make_family_checkpoint(arch, root / arch) for arch in FAMILY_ARCHS}

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


# ---- live servers: module-scoped, so each test file that asks gets a server of its own ----------


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """A real tritonserver serving the ensemble with the default model (tests/live_server.py)."""
    from live_server import start_server

    s = start_server(tmp_path_factory.mktemp("triton"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    """The OpenAI service in front of this module's `triton` (tests/live_service.py)."""
    from live_service import start_service

    s = start_service(triton, tmp_path_factory.mktemp("openai"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def offline():
    """The offline engine with the live server's model and engine arguments: the oracle."""
    from live_server import DEFAULT_MODEL, ENGINE_ARGS
    from pagedllm import LLM

    return LLM(model=str(DEFAULT_MODEL), **ENGINE_ARGS)

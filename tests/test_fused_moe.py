"""The mixture-of-experts feed-forward: the torch reference against a per-token float64 loop, and
the OpenAI Triton kernels (kernels/pagedllm_kernels/triton_fused_moe.py) against the reference.

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets TRITON_INTERPRET=1)
at small sizes. Tolerance as tests/test_kernels.py: max |out - ref| <= TOL * max |ref|.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import pagedllm_kernels as kernels  # noqa: E402
from pagedllm_kernels.reference import fused_moe_ref  # noqa: E402
from pagedllm_kernels.triton_fused_moe import align, fused_moe  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def make_moe(num_tokens, num_experts, top_k, hidden, inter, dtype, seed=0, skip_expert=None):
    """Random tokens, experts and a routing with distinct experts per token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=g)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) * hidden**-0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) * inter**-0.5
    scores = torch.randn(num_tokens, num_experts, generator=g)
    if skip_expert is not None:
        scores[:, skip_expert] = -1e9  # no token picks it
    weights, ids = scores.softmax(-1).topk(top_k, dim=-1)
    return [t.to(DEVICE) for t in (x.to(dtype), w13.to(dtype), w2.to(dtype), weights, ids)]


def naive_moe(x, w13, w2, weights, ids):
    """Token by token, expert by expert, in float64."""
    x, w13, w2, weights = x.double(), w13.double(), w2.double(), weights.double()
    inter = w2.shape[2]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            gate_up = w13[e] @ x[t]
            out[t] += weights[t, k] * (w2[e] @ (F.silu(gate_up[:inter]) * gate_up[inter:]))
    return out


def assert_close(out, expected, dtype):
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.isfinite().all()
    err, bound = (out.double() - expected.double()).abs().max().item(), TOL[dtype] * expected.abs().max().item()
    assert err <= bound, f"max abs err {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("num_tokens, top_k", [(1, 2), (7, 2), (30, 1), (12, 4)])
def test_reference_matches_a_per_token_loop(num_tokens, top_k):
    args = [t.cpu() for t in make_moe(num_tokens, 8, top_k, 32, 24, torch.float32)]
    torch.testing.assert_close(fused_moe_ref(*args).double(), naive_moe(*args), atol=1e-5, rtol=1e-5)


def test_align_groups_every_pair_by_expert_in_padded_blocks():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [5, 3]], device=DEVICE)
    sorted_ids, block_expert = align(ids, num_experts=8, block_m=4)
    num_pairs = ids.numel()
    assert sorted(p for p in sorted_ids.tolist() if p < num_pairs) == list(range(num_pairs))
    blocks = sorted_ids.view(-1, 4).tolist()
    flat = ids.reshape(-1).tolist()
    for block, expert in zip(blocks, block_expert.tolist()):
        pairs = [p for p in block if p < num_pairs]
        if expert < 0:
            assert not pairs  # blocks past the last expert's run are empty
        else:
            assert pairs and all(flat[p] == expert for p in pairs)
    assert [e for e in block_expert.tolist() if e >= 0] == [0, 1, 3, 5]


@pytest.mark.parametrize("num_tokens", [1, 5, 40])
@pytest.mark.parametrize("top_k", [1, 2])
def test_kernel_matches_reference(num_tokens, top_k):
    args = make_moe(num_tokens, 8, top_k, 64, 32, torch.float32)
    assert_close(fused_moe(*args), fused_moe_ref(*args), torch.float32)


def test_kernel_with_ragged_sizes_and_an_idle_expert():
    # hidden and intermediate sizes that are not multiples of the tiles; expert 2 gets no token.
    args = make_moe(9, 6, 2, 80, 40, torch.float32, skip_expert=2)
    assert_close(fused_moe(*args), fused_moe_ref(*args), torch.float32)


def test_kernel_float16_with_weights_in_the_model_dtype():
    x, w13, w2, weights, ids = make_moe(11, 8, 2, 64, 32, torch.float16)
    weights = weights.half()  # Qwen3-MoE rounds its routing weights to the model's dtype
    expected = fused_moe_ref(x.float(), w13.float(), w2.float(), weights.float(), ids)
    assert_close(fused_moe(x, w13, w2, weights, ids), expected, torch.float16)


def test_the_checked_launcher_rejects_mismatched_shapes():
    x, w13, w2, weights, ids = make_moe(3, 4, 2, 32, 16, torch.float32)
    with pytest.raises(ValueError, match="w2"):
        fused_moe(x, w13, w2[:, :, :8].contiguous(), weights, ids)
    with pytest.raises(ValueError, match="topk_weights"):
        fused_moe(x, w13, w2, weights[:, :1], ids)


def test_cpu_takes_the_reference_and_cuda_the_kernel():
    assert kernels.select_ops("cpu", torch.float32).fused_moe is fused_moe_ref
    if CUDA:
        for dtype in (torch.float32, torch.bfloat16):
            assert kernels.select_ops("cuda", dtype).fused_moe is not fused_moe_ref


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_tokens", [1, 64, 2048])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_gpu_kernel_at_qwen3_moe_sizes(num_tokens, dtype):
    # Qwen3-30B-A3B's MoE layer: 128 experts, top-8, hidden 2048, expert intermediate 768.
    x, w13, w2, weights, ids = make_moe(num_tokens, 128, 8, 2048, 768, dtype)
    expected = fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids)
    assert_close(fused_moe(x, w13, w2, weights, ids), expected, dtype)

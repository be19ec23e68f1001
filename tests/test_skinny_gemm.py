"""The OpenAI Triton skinny GEMM (kernels/pagedllm_kernels/triton_skinny_gemm.py) against
`torch.nn.functional.linear` in float32 on the same (rounded) inputs, the oracle.

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets TRITON_INTERPRET=1
before triton is imported) at small sizes, with N and K that are not multiples of the tiles.
The interpreter's tl.dot mishandles bfloat16, so bf16 runs the GEMV formulation only there;
its casts to bfloat16 also truncate rather than round, which the bf16 tolerance covers. With
CUDA, the GPU section runs the compiled kernels at the Llama-3.1-8B decode shapes in bf16.

Tolerance as tests/test_kernels.py: max |out - ref| <= TOL[dtype] * max |ref|.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from pagedllm_kernels.triton_skinny_gemm import (MAX_M, LaunchConfig, choose_split_k, launch,  # noqa: E402
                                                 launch_config, skinny_gemm)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
H200_SMS = 132

# Llama-3.1-8B's decode projections: (N, K) of fused q|k|v, o, fused gate|up, down, LM head.
SHAPES_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
             "lm_head": (128256, 4096)}


def make_gemm(m, n, k, dtype, bias=False, seed=0, device=DEVICE):
    """x [m, k], W [n, k] scaled like a model's weights (outputs of order 1), bias [n] or None."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device).to(dtype)
    w = (torch.randn(n, k, generator=g, device=device) * k**-0.5).to(dtype)
    b = torch.randn(n, generator=g, device=device).to(dtype) if bias else None
    return x, w, b


def expected(x, w, b):
    return F.linear(x.float(), w.float(), None if b is None else b.float())


def assert_close(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous()
    assert out.isfinite().all()
    err, bound = (out.float() - ref).abs().max().item(), TOL[dtype] * ref.abs().max().item()
    assert err <= bound, f"max abs err {err:.3g} > {bound:.3g} ({TOL[dtype]} * max|ref|)"


# ------------------------------------------------------------------------------------------
# Both devices: small sizes (the CPU interpreter runs each program in Python).


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("n, k", [(64, 128), (96, 320), (200, 1000)])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
def test_matches_float32_linear(m, n, k, dtype, bias, split_k):
    # The launcher's own tiles (GEMV up to 4 rows, tl.dot beyond); split_k 3 leaves the last split
    # empty where K has fewer than 3 * 2 steps, which must add zeros.
    x, w, b = make_gemm(m, n, k, dtype, bias)
    assert_close(skinny_gemm(x, w, b, split_k=split_k), expected(x, w, b), dtype)


@pytest.mark.parametrize("split_k", [1, 2, 5])
@pytest.mark.parametrize("use_dot", [False, True], ids=["gemv", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_both_formulations_with_small_tiles(m, dtype, use_dot, split_k):
    # Many K steps per split, ragged tiles in both N (200 = 12.5 tiles) and K (1000 = 31.25 steps).
    x, w, b = make_gemm(m, 200, 1000, dtype, bias=True, seed=1)
    config = LaunchConfig(block_n=16, block_k=32, split_k=split_k, use_dot=use_dot)
    assert_close(skinny_gemm(x, w, b, config=config), expected(x, w, b), dtype)


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_bfloat16_gemv(m, split_k):
    x, w, b = make_gemm(m, 200, 1000, torch.bfloat16, bias=True, seed=2)
    config = LaunchConfig(block_n=16, block_k=64, split_k=split_k, use_dot=False)
    assert_close(skinny_gemm(x, w, b, config=config), expected(x, w, b), torch.bfloat16)


def test_split_k_is_deterministic():
    x, w, b = make_gemm(4, 96, 1000, torch.float32, bias=True, seed=3)
    first = skinny_gemm(x, w, b, split_k=4)
    assert torch.equal(first, skinny_gemm(x, w, b, split_k=4))


def test_strided_rows_are_read_in_place_and_strided_columns_copied():
    # Rows of a wider buffer (a slice of a fused output) keep their stride; a transposed x
    # (stride along K != 1) is copied to contiguous first.
    x, w, b = make_gemm(5, 96, 320, torch.float16, bias=True, seed=4)
    wide = torch.zeros(5, 400, dtype=torch.float16, device=DEVICE)
    wide[:, 40:360] = x
    assert_close(skinny_gemm(wide[:, 40:360], w, b), expected(x, w, b), torch.float16)
    transposed = x.t().contiguous().t()
    assert transposed.stride(1) != 1
    assert_close(skinny_gemm(transposed, w, b), expected(x, w, b), torch.float16)


def test_leading_dims_and_empty_batches():
    x, w, b = make_gemm(6, 64, 128, torch.float32, bias=True, seed=5)
    out = skinny_gemm(x.view(2, 3, 128), w, b)
    assert out.shape == (2, 3, 64)
    assert_close(out.view(6, 64), expected(x, w, b), torch.float32)
    assert skinny_gemm(x[:0], w, b).shape == (0, 64)


def test_the_checked_launcher_names_the_bad_argument():
    x, w, b = make_gemm(2, 64, 128, torch.float16, bias=True)
    bad = {
        "x": [(x.int(), w, b), (x[:, :0], w[:, :0], b), (torch.zeros(MAX_M + 1, 128, dtype=x.dtype), w, b)],
        "weight": [(x, w[:, :100], b), (x, w.float(), b), (x, w.t().contiguous().t(), b), (x, w[:, None], b)],
        "bias": [(x, w, b[:10]), (x, w, b.float()), (x, w, torch.zeros(64, 2, dtype=x.dtype)[:, 0])],
    }
    for name, cases in bad.items():
        for args in cases:
            with pytest.raises(ValueError, match=f"^{name}:"):
                skinny_gemm(*args)
    with pytest.raises(ValueError, match="^split_k:"):
        skinny_gemm(x, w, b, split_k=0)
    for config in (LaunchConfig(block_n=24, block_k=64), LaunchConfig(block_n=8, block_k=64, use_dot=True),
                   LaunchConfig(block_n=16, block_k=64, split_k=0)):
        with pytest.raises(ValueError, match="^config:"):
            skinny_gemm(x, w, b, config=config)


@needs_cuda
def test_the_checked_launcher_rejects_tensors_on_two_devices():
    x, w, b = make_gemm(2, 64, 128, torch.float16, bias=True)
    with pytest.raises(ValueError, match="^weight:"):
        skinny_gemm(x, w.cpu(), b)


@pytest.mark.parametrize("name", list(SHAPES_8B))
@pytest.mark.parametrize("m", [1, 4, 8, 16])
def test_launch_config_follows_its_documented_rule(m, name):
    # Pure Python (no launch): the choices `launch_config`'s docstring describes, at the 8B shapes.
    n, k = SHAPES_8B[name]
    c = launch_config(m, n, k, torch.bfloat16, H200_SMS)
    assert c.use_dot == (m > 4)
    assert c.block_k == 256  # 512 bytes of a bf16 row per step
    if c.use_dot:
        assert c.block_n == 64
    else:
        assert c.block_n * c.block_k * (1 << (m - 1).bit_length()) <= 8192  # BLOCK_M = next power of 2
    steps = -(-k // c.block_k)
    assert c.split_k == choose_split_k(n, k, c.block_n, c.block_k, H200_SMS)
    assert c.split_k & (c.split_k - 1) == 0 and steps // c.split_k >= 4
    tiles = -(-n // c.block_n)
    # doubled until 4 programs an SM, or until a further doubling would leave a split < 4 steps
    assert tiles * c.split_k >= 4 * H200_SMS or steps < 2 * c.split_k * 4
    assert tiles * c.split_k // 2 < 4 * H200_SMS or c.split_k == 1
    if name == "lm_head":
        assert c.split_k == 1  # columns enough to fill the GPU
    if name in ("o", "down") and m == 1:
        assert c.split_k > 1


def test_split_k_stays_1_for_short_k_and_grows_with_sms():
    assert choose_split_k(64, 128, 32, 128, num_sms=132) == 1  # one K step
    assert choose_split_k(4096, 4096, 32, 256, num_sms=4) == 1  # 128 tiles already fill 4 SMs
    assert choose_split_k(4096, 4096, 32, 256, num_sms=132) == 4


# ------------------------------------------------------------------------------------------
# CUDA only: the compiled kernels at Llama-3.1-8B's decode shapes, bf16.


@needs_cuda
@pytest.mark.parametrize("name", list(SHAPES_8B))
@pytest.mark.parametrize("m", [1, 4, 8, 16])
def test_gpu_8b_shapes_bf16(m, name):
    n, k = SHAPES_8B[name]
    x, w, _ = make_gemm(m, n, k, torch.bfloat16)
    assert_close(launch(x, w), expected(x, w, None), torch.bfloat16)


@needs_cuda
@pytest.mark.parametrize("split_k", [1, 8])
@pytest.mark.parametrize("use_dot", [False, True], ids=["gemv", "dot"])
@pytest.mark.parametrize("m", [1, 4, 16])
def test_gpu_both_formulations_bf16_with_bias(m, use_dot, split_k):
    x, w, b = make_gemm(m, 4096, 4096, torch.bfloat16, bias=True)
    config = LaunchConfig(block_n=32, block_k=128, split_k=split_k, use_dot=use_dot)
    assert_close(skinny_gemm(x, w, b, config=config), expected(x, w, b), torch.bfloat16)


@needs_cuda
def test_gpu_a_cuda_graph_replays_the_split_k_launch():
    # The engine's decode steps are graph replays: the partials buffer comes from the graph's pool.
    x, w, _ = make_gemm(4, 4096, 4096, torch.bfloat16)
    assert launch_config(4, 4096, 4096, torch.bfloat16, H200_SMS).split_k > 1
    launch(x, w)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launch(x, w)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, expected(x, w, None), torch.bfloat16)

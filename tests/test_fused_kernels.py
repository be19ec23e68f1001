"""The fused elementwise kernels (residual add + RMSNorm, silu * up, rotary, q/k norm + rotary)
against their torch references (kernels/pagedllm_kernels/reference.py, the oracle), and the model run through them.

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets TRITON_INTERPRET=1)
in float32 and float16 at small sizes. Not bfloat16: the interpreter casts float32 to bfloat16
by truncation (round toward zero), where torch and the GPU round to nearest even, so any bf16
rounding may be a step off there. bf16 (and fp16) run in the GPU section at the model's sizes
(hidden 2048, FFN 8192, up to 8192 tokens).

Tolerances, each the kernel's own rounding argument (docstrings of kernels/triton_*.py):
- rotary: exact, every dtype. Every op rounds where torch's does, on the same values.
- fused_add_rms_norm: the new residual exact (a float32 add rounded once, as torch's add); the
  normalised row as tests/test_rms_norm_kernel.py bounds `rms_norm` (the same lines, on the
  rounded sum): two rounding steps, >= 99 % of 16-bit elements bit-identical; and bit-identical
  to torch's add followed by the rms_norm kernel.
- qk_norm_rotary: the norm's two rounding steps (its sum of squares runs in another order), which
  the rotary's products carry: two steps of the head's largest value (x1*cos - x2*sin can cancel
  to much less), >= 99 % bit-identical in 16 bits, against both the reference chain and the
  rms_norm and rotary kernels run one after the other.
- silu_and_mul: only exp differs (numpy in the interpreter, Sleef in CPU torch; libdevice on
  CUDA, as in torch's CUDA silu), by an ulp or two of float32: float32 within 1e-6 relative. In
  16 bits that can flip silu's rounding by one step, which the product carries into its own
  rounding: two steps, and >= 99.9 % bit-identical (2 of 9900 fp16 elements differ here).
Subnormal 16-bit results get two steps of the subnormal spacing as an absolute allowance.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import pagedllm_kernels as kernels  # noqa: E402
from pagedllm_kernels import REFERENCE_OPS  # noqa: E402
from pagedllm_kernels.reference import (fused_add_rms_norm_ref, reshape_and_cache_ref, rms_norm_ref,  # noqa: E402
                                       rotary_ref, silu_and_mul_ref)
from pagedllm_kernels.triton_fused_add_rms_norm import fused_add_rms_norm  # noqa: E402
from pagedllm_kernels.triton_qk_norm_rotary import qk_norm_rotary, qk_norm_rotary_into_cache  # noqa: E402
from pagedllm_kernels.triton_rms_norm import rms_norm  # noqa: E402
from pagedllm_kernels.triton_rotary import rotary, rotary_into_cache  # noqa: E402
from pagedllm_kernels.triton_silu_and_mul import silu_and_mul  # noqa: E402
from pagedllm.layers.attention import AttentionMetadata  # noqa: E402
from pagedllm.layers.rotary import RotaryEmbedding  # noqa: E402
from pagedllm.models.config import ModelConfig  # noqa: E402
from pagedllm.models.registry import load_model  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
ULP = {torch.float32: 1e-6, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # one step, relative
SUBNORMAL_STEP = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}
STEPS = 2
INTERPRETER_DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
GPU_DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
LLAMA3_SCALING = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192)


def _randn(shape, dtype, g, scale=3.0):
    return (torch.randn(shape, generator=g, device=DEVICE) * scale).to(dtype)


def assert_within_steps(got, want, min_identical):
    """|got - want| <= two rounding steps; in 16 bits, a share of elements bit-identical."""
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = (got.float() - want.float()).abs()
    bound = STEPS * ULP[got.dtype] * want.float().abs() + STEPS * SUBNORMAL_STEP[got.dtype]
    assert (diff <= bound).all(), diff.max()
    if got.dtype != torch.float32:
        assert (diff == 0).float().mean() >= min_identical


# --- residual add + RMSNorm ----------------------------------------------------------------------

def _add_norm_inputs(shape, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    weight = (1 + 0.5 * torch.randn(shape[-1], generator=g, device=DEVICE)).to(dtype)
    return _randn(shape, dtype, g), _randn(shape, dtype, g), weight


def check_add_norm(x, residual, weight, eps=1e-5):
    out, new_residual = fused_add_rms_norm(x, residual, weight, eps)
    want_out, want_residual = fused_add_rms_norm_ref(x, residual, weight, eps)
    assert torch.equal(new_residual, want_residual)
    assert_within_steps(out, want_out, 0.99)


@INTERPRETER_DTYPES
@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 100), (1, 2048)])
def test_fused_add_rms_norm_matches_reference(shape, dtype):
    check_add_norm(*_add_norm_inputs(shape, dtype))


@INTERPRETER_DTYPES
def test_fused_add_rms_norm_is_torch_add_then_the_rms_norm_kernel(dtype):
    """The norm half is rms_norm's kernel line for line: same bits, whatever the sum's order."""
    x, residual, weight = _add_norm_inputs((6, 200), dtype, seed=1)
    out, new_residual = fused_add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(new_residual, residual + x)
    assert torch.equal(out, rms_norm(residual + x, weight, 1e-6))


def test_fused_add_rms_norm_reads_strided_rows():
    x, residual, weight = _add_norm_inputs((4, 96), torch.float32)
    check_add_norm(x[:, :64], residual[:, 16:80], weight[:64].contiguous())


# --- silu * up -----------------------------------------------------------------------------------

@INTERPRETER_DTYPES
@pytest.mark.parametrize("shape", [(5, 2 * 96), (2, 3, 2 * 300), (3, 2 * 2500)])  # 2500: three column tiles
def test_silu_and_mul_matches_reference(shape, dtype):
    gate_up = _randn(shape, dtype, torch.Generator(device=DEVICE).manual_seed(2), scale=4.0)
    assert_within_steps(silu_and_mul(gate_up), silu_and_mul_ref(gate_up), 0.999)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the interpreter's numpy
def test_silu_and_mul_at_extreme_gates():
    """exp(-gate) overflows to inf for gate << 0 (silu -> -0) and underflows for gate >> 0."""
    gate = torch.tensor([[-1e4, -100.0, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.0, 100.0, 1e4]])
    gate_up = torch.cat([gate, torch.full_like(gate, 1.5)], dim=-1).to(DEVICE)
    assert_within_steps(silu_and_mul(gate_up), silu_and_mul_ref(gate_up), 1.0)


# --- rotary --------------------------------------------------------------------------------------

def _tables(head_dim, max_position, rope_scaling=None):
    rope = RotaryEmbedding(head_dim, max_position, 500000.0, rope_scaling).to(DEVICE)
    return rope.cos_cache, rope.sin_cache


def _qkv(num_tokens, num_q_heads, num_k_heads, head_dim, dtype, seed=3):
    """q and k as the model slices them out of a fused qkv output: strided views."""
    return _qkv_and_v(num_tokens, num_q_heads, num_k_heads, head_dim, dtype, seed)[:2]


def _qkv_and_v(num_tokens, num_q_heads, num_k_heads, head_dim, dtype, seed=3):
    """q, k and v as the model slices them out of a fused qkv output: strided views."""
    width = (num_q_heads + 2 * num_k_heads) * head_dim
    qkv = _randn((num_tokens, width), dtype, torch.Generator(device=DEVICE).manual_seed(seed))
    q, k, v = qkv.split([num_q_heads * head_dim, num_k_heads * head_dim, num_k_heads * head_dim], dim=-1)
    return (q.view(num_tokens, num_q_heads, head_dim), k.view(num_tokens, num_k_heads, head_dim),
            v.view(num_tokens, num_k_heads, head_dim))


def _caches_and_slots(num_tokens, num_k_heads, head_dim, dtype, seed=9):
    """Two filled [num_blocks, 16, heads, head_dim] caches and shuffled slots, every third one -1
    (a padding token, written nowhere)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    num_blocks = num_tokens // 16 + 2
    key_cache, value_cache = (_randn((num_blocks, 16, num_k_heads, head_dim), dtype, g) for _ in range(2))
    slots = torch.randperm(num_blocks * 16, generator=g, device=DEVICE)[:num_tokens]
    slots[::3] = -1
    return key_cache, value_cache, slots


def check_into_cache(fused, separate, q, k, v, num_tokens):
    """fused(key_cache, value_cache, slots) -> q must equal separate() -> (q, k) followed by the
    reference cache write, bit for bit: the same kernel lines, only k's destination differs."""
    key_cache, value_cache, slots = _caches_and_slots(num_tokens, k.shape[1], k.shape[2], k.dtype)
    want_k, want_v = key_cache.clone(), value_cache.clone()
    want_q, rotated_k = separate()
    reshape_and_cache_ref(rotated_k, v, want_k, want_v, slots)
    got_q = fused(key_cache, value_cache, slots)
    assert got_q.is_contiguous() and torch.equal(got_q, want_q)
    assert torch.equal(key_cache, want_k) and torch.equal(value_cache, want_v)
    return want_k


def check_rotary(q, k, positions, cos_cache, sin_cache):
    got_q, got_k = rotary(q, k, positions, cos_cache, sin_cache)
    want_q, want_k = rotary_ref(q, k, positions, cos_cache, sin_cache)
    assert got_q.is_contiguous() and got_k.is_contiguous()
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)


@INTERPRETER_DTYPES
@pytest.mark.parametrize("heads", [(4, 2, 16), (6, 3, 24), (8, 8, 64), (4, 2, 96)],
                         ids=["gqa", "odd-heads", "mha", "head-dim-96"])
def test_rotary_is_bit_identical_to_reference(heads, dtype):
    num_q_heads, num_k_heads, head_dim = heads
    q, k = _qkv(9, num_q_heads, num_k_heads, head_dim, dtype)
    positions = torch.randint(0, 4096, (9,), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    check_rotary(q, k, positions, *_tables(head_dim, 4096, LLAMA3_SCALING))


@INTERPRETER_DTYPES
@pytest.mark.parametrize("heads", [(4, 2, 16), (6, 3, 32), (16, 8, 128), (8, 4, 96), (4, 2, 80)],
                         ids=["gqa", "odd-heads", "qwen3", "head-dim-96", "head-dim-80"])
def test_rotary_into_cache_is_the_rotary_then_the_cache_write(heads, dtype):
    q, k, v = _qkv_and_v(11, *heads, dtype)
    positions = torch.randint(0, 4096, (11,), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    tables = (positions, *_tables(heads[2], 4096, LLAMA3_SCALING))
    check_into_cache(lambda kc, vc, slots: rotary_into_cache(q, k, v, *tables, kc, vc, slots),
                     lambda: rotary(q, k, *tables), q, k, v, 11)


def test_rotary_into_cache_takes_int32_slots_and_writes_only_its_slots():
    q, k, v = _qkv_and_v(3, 4, 2, 16, torch.float32)
    tables = (torch.tensor([0, 5, 2], device=DEVICE), *_tables(16, 8))
    key_cache, value_cache = _ones(2, 16, 2, 16), _ones(2, 16, 2, 16)
    slots = torch.tensor([17, -1, 3], dtype=torch.int32, device=DEVICE)
    rotary_into_cache(q, k, v, *tables, key_cache, value_cache, slots)
    _, rotated_k = rotary(q, k, *tables)
    flat_k, flat_v = key_cache.view(32, 2, 16), value_cache.view(32, 2, 16)
    assert torch.equal(flat_k[17], rotated_k[0]) and torch.equal(flat_k[3], rotated_k[2])
    assert torch.equal(flat_v[17], v[0]) and torch.equal(flat_v[3], v[2])
    untouched = [i for i in range(32) if i not in (3, 17)]
    assert (flat_k[untouched] == 1).all() and (flat_v[untouched] == 1).all()


def test_rotary_of_contiguous_heads_int32_positions():
    """Qwen3 rotates its q/k norms' outputs: contiguous tensors."""
    q, k = _qkv(5, 4, 2, 32, torch.float16)
    check_rotary(q.contiguous(), k.contiguous(), torch.arange(5, dtype=torch.int32, device=DEVICE),
                 *_tables(32, 16))


# --- q/k norm + rotary ---------------------------------------------------------------------------

def check_qk_norm_rotary(q, k, positions, cos_cache, sin_cache, eps=1e-6, seed=6):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    qw, kw = ((1 + 0.5 * torch.randn(q.shape[2], generator=g, device=DEVICE)).to(q.dtype)
              for _ in range(2))
    got_q, got_k = qk_norm_rotary(q, k, qw, kw, eps, positions, cos_cache, sin_cache)
    assert got_q.is_contiguous() and got_k.is_contiguous()
    tables = (positions, cos_cache, sin_cache)
    want = rotary_ref(rms_norm_ref(q, qw, eps), rms_norm_ref(k, kw, eps), *tables)
    chain = rotary(rms_norm(q, qw, eps), rms_norm(k, kw, eps), *tables)
    for got, ref, kernels_apart in zip((got_q, got_k), want, chain):
        for other in (ref, kernels_apart):
            # NOTE: a step of the norm moves the rotary's products by a step of THEIR size, and
            # x1*cos - x2*sin can cancel to far less: the bound scales with the head's largest value
            diff = (got.float() - other.float()).abs()
            scale = other.float().abs().amax(dim=-1, keepdim=True)
            assert (diff <= STEPS * ULP[got.dtype] * scale + STEPS * SUBNORMAL_STEP[got.dtype]).all()
            if got.dtype != torch.float32:
                assert (diff == 0).float().mean() >= 0.99


@INTERPRETER_DTYPES
@pytest.mark.parametrize("heads", [(4, 2, 16), (6, 3, 24), (16, 8, 128), (4, 2, 96)],
                         ids=["gqa", "odd-heads", "qwen3", "head-dim-96"])
def test_qk_norm_rotary_is_the_norms_then_the_rotary(heads, dtype):
    q, k = _qkv(7, *heads, dtype)
    positions = torch.randint(0, 4096, (7,), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    check_qk_norm_rotary(q, k, positions, *_tables(heads[2], 4096))


@INTERPRETER_DTYPES
@pytest.mark.parametrize("heads", [(4, 2, 16), (16, 8, 128), (8, 4, 96), (4, 2, 112)],
                         ids=["gqa", "qwen3", "head-dim-96", "head-dim-112"])
def test_qk_norm_rotary_into_cache_is_qk_norm_rotary_then_the_cache_write(heads, dtype):
    q, k, v = _qkv_and_v(10, *heads, dtype)
    positions = torch.randint(0, 4096, (10,), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    g = torch.Generator(device=DEVICE).manual_seed(6)
    qw, kw = ((1 + 0.5 * torch.randn(heads[2], generator=g, device=DEVICE)).to(dtype) for _ in range(2))
    args = (qw, kw, 1e-6, positions, *_tables(heads[2], 4096))
    check_into_cache(lambda kc, vc, slots: qk_norm_rotary_into_cache(q, k, v, *args, kc, vc, slots),
                     lambda: qk_norm_rotary(q, k, *args), q, k, v, 10)


def test_qk_norm_rotary_rejects_a_weight_of_the_wrong_size():
    q, k = _ones(3, 4, 16), _ones(3, 2, 16)
    with pytest.raises(ValueError, match="k_weight"):
        qk_norm_rotary(q, k, _ones(16), _ones(8), 1e-6, torch.zeros(3, dtype=torch.int64, device=DEVICE),
                       *_tables(16, 8))


# --- edges and errors ----------------------------------------------------------------------------

def test_no_tokens():
    x = torch.ones(0, 64, device=DEVICE)
    out, new_residual = fused_add_rms_norm(x, x, torch.ones(64, device=DEVICE), 1e-5)
    assert out.shape == new_residual.shape == (0, 64)
    assert silu_and_mul(torch.ones(0, 128, device=DEVICE)).shape == (0, 64)
    q, k = rotary(torch.ones(0, 4, 16, device=DEVICE), torch.ones(0, 2, 16, device=DEVICE),
                  torch.zeros(0, dtype=torch.int64, device=DEVICE), *_tables(16, 8))
    assert q.shape == (0, 4, 16) and k.shape == (0, 2, 16)


def _ones(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("changes, match", [
    ({"residual": _ones(2, 32)}, "residual"),
    ({"residual": _ones(2, 64, dtype=torch.float16)}, "residual"),
    ({"weight": _ones(32)}, "weight"),
    ({"x": _ones(2, 64, dtype=torch.int32)}, "x"),
])
def test_fused_add_rms_norm_rejects(changes, match):
    args = dict(x=_ones(2, 64), residual=_ones(2, 64), weight=_ones(64), eps=1e-5) | changes
    with pytest.raises(ValueError, match=match):
        fused_add_rms_norm(**args)


@pytest.mark.parametrize("gate_up", [_ones(2, 63), _ones(2, 64, dtype=torch.int32)], ids=["odd", "int"])
def test_silu_and_mul_rejects(gate_up):
    with pytest.raises(ValueError, match="gate_up"):
        silu_and_mul(gate_up)


@pytest.mark.parametrize("changes, match", [
    ({"q": _ones(3, 64)}, "q"),
    ({"k": _ones(3, 2, 32)}, "k"),
    ({"k": _ones(3, 2, 16, dtype=torch.float16)}, "k"),
    ({"positions": torch.zeros(2, dtype=torch.int64, device=DEVICE)}, "positions"),
    ({"positions": torch.zeros(3, device=DEVICE)}, "positions"),
    ({"cos_cache": _ones(8, 16)}, "cos_cache"),
    ({"cos_cache": _ones(8, 8, dtype=torch.float16)}, "cos_cache"),
    ({"sin_cache": _ones(9, 8)}, "sin_cache"),
])
def test_rotary_rejects(changes, match):
    args = dict(q=_ones(3, 4, 16), k=_ones(3, 2, 16), positions=torch.zeros(3, dtype=torch.int64, device=DEVICE),
                cos_cache=_ones(8, 8), sin_cache=_ones(8, 8)) | changes
    with pytest.raises(ValueError, match=match):
        rotary(**args)


@pytest.mark.parametrize("changes, match", [
    ({"v": _ones(3, 2, 8)}, "value"),
    ({"v": _ones(3, 2, 16, dtype=torch.float16)}, "value"),
    ({"key_cache": _ones(2, 16, 4, 16)}, "value_cache"),
    ({"key_cache": _ones(2, 16, 2, 16)[:, ::2]}, "key_cache"),
    ({"slot_mapping": torch.zeros(2, dtype=torch.int64, device=DEVICE)}, "slot_mapping"),
    ({"slot_mapping": torch.zeros(3, device=DEVICE)}, "slot_mapping"),
    ({"positions": torch.zeros(2, dtype=torch.int64, device=DEVICE)}, "positions"),
])
def test_rotary_into_cache_rejects(changes, match):
    args = dict(q=_ones(3, 4, 16), k=_ones(3, 2, 16), v=_ones(3, 2, 16),
                positions=torch.zeros(3, dtype=torch.int64, device=DEVICE), cos_cache=_ones(8, 8),
                sin_cache=_ones(8, 8), key_cache=_ones(2, 16, 2, 16), value_cache=_ones(2, 16, 2, 16),
                slot_mapping=torch.zeros(3, dtype=torch.int64, device=DEVICE)) | changes
    with pytest.raises(ValueError, match=match):
        rotary_into_cache(**args)
    if match not in ("positions",):
        extra = dict(q_weight=_ones(16), k_weight=_ones(16), eps=1e-6)
        with pytest.raises(ValueError, match=match):
            qk_norm_rotary_into_cache(**args, **extra)


@pytest.mark.parametrize("head_dim", [14, 258])
def test_the_cache_writes_refuse_a_head_dim_the_kernels_do_not_take(head_dim):
    """The rotary takes any even head size; writing the cache, it takes the cache's rule."""
    q, k, v = _ones(3, 4, head_dim), _ones(3, 2, head_dim), _ones(3, 2, head_dim)
    tables = (torch.zeros(3, dtype=torch.int64, device=DEVICE), _ones(8, head_dim // 2), _ones(8, head_dim // 2))
    caches = (_ones(2, 16, 2, head_dim), _ones(2, 16, 2, head_dim), torch.zeros(3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match=f"key_cache: head_dim {head_dim}"):
        rotary_into_cache(q, k, v, *tables, *caches)
    with pytest.raises(ValueError, match=f"key_cache: head_dim {head_dim}"):
        qk_norm_rotary_into_cache(q, k, v, _ones(head_dim), _ones(head_dim), 1e-6, *tables, *caches)


# --- dispatch and the model ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_and_float32_take_the_references_exactly(dtype):
    """CPU runs the references (the float32 parity contract), and so does CUDA in float32 and
    float16 for the elementwise ops; select_ops looks at the device's type only: no GPU needed."""
    assert kernels.select_ops("cpu", dtype) is REFERENCE_OPS
    for other in (torch.float32, torch.float16):
        ops = kernels.select_ops("cuda", other)
        assert (ops.rms_norm, ops.fused_add_rms_norm, ops.silu_and_mul, ops.rope, ops.rotary) == (
            rms_norm_ref, fused_add_rms_norm_ref, silu_and_mul_ref, REFERENCE_OPS.rope,
            REFERENCE_OPS.rotary)


def test_cuda_bf16_selects_the_kernels_and_the_reference_backend_undoes_it():
    """select_ops looks at the device's type only: this runs without a GPU."""
    ops = kernels.select_ops("cuda", torch.bfloat16)
    t = kernels._load_triton_ops()
    assert ops is t
    assert (ops.fused_add_rms_norm, ops.silu_and_mul, ops.rotary) == (t.fused_add_rms_norm, t.silu_and_mul, t.rotary)
    assert (ops.rotary_into_cache, ops.qk_norm_rotary) == (t.rotary_into_cache, t.qk_norm_rotary)
    fp32 = kernels.select_ops("cuda", torch.float32)
    assert (fp32.paged_attention, fp32.reshape_and_cache) == (t.paged_attention, t.reshape_and_cache)
    assert fp32.qk_norm_rotary is not t.qk_norm_rotary and fp32.rotary_into_cache is not t.rotary_into_cache
    assert kernels.select_ops("cuda", torch.bfloat16, "reference") is REFERENCE_OPS
    with pytest.raises(ValueError, match="kernel_backend"):
        kernels.select_ops("cuda", torch.bfloat16, "triton-please")


def test_the_composed_folds_are_the_ops_in_transformers_order():
    """Where no kernel folds the q/k norms, the rotary and the cache write, the one op the
    attention block calls runs them one after the other, in transformers' order: exactly."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(5, h, 16, generator=g) for h in (4, 2, 2))
    qw, kw = torch.rand(16, generator=g) + 0.5, torch.rand(16, generator=g) + 0.5
    cos, sin = (t.cpu() for t in _tables(16, 8))
    positions, slots = torch.tensor([0, 7, 3, 2, 1]), torch.tensor([9, -1, 0, 4, 31])
    rope = REFERENCE_OPS.rope(positions, cos, sin, q.dtype)
    caches = [torch.zeros(2, 4, 8, 2, 16) for _ in range(2)]
    got = REFERENCE_OPS.qk_norm_rotary(q, k, v, qw, kw, 1e-6, rope, caches[0][0], caches[0][1], slots)
    want_q, want_k = rotary_ref(rms_norm_ref(q, qw, 1e-6), rms_norm_ref(k, kw, 1e-6), positions, cos, sin)
    reshape_and_cache_ref(want_k, v, caches[1][0], caches[1][1], slots)
    assert torch.equal(got, want_q) and torch.equal(caches[0], caches[1])


def _prefill_logits(model, ids: list[int]) -> torch.Tensor:
    """One prefill of `ids` over a fresh, contiguous paged cache (block size 16)."""
    c, n = model.config, len(ids)
    dtype = next(model.parameters()).dtype
    num_blocks = (n + 15) // 16
    device = next(model.parameters()).device
    caches = [torch.zeros(2, num_blocks, 16, c.num_key_value_heads, c.head_dim, dtype=dtype, device=device)
              for _ in range(c.num_hidden_layers)]
    i32 = dict(dtype=torch.int32, device=device)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n, device=device), block_tables=torch.arange(num_blocks, **i32)[None],
        seq_lens=torch.tensor([n], **i32), query_start_loc=torch.tensor([0, n], **i32),
        max_query_len=n, max_seq_len=n)
    with torch.inference_mode():
        ids_t = torch.tensor(ids, device=device)
        return model.compute_logits(model(ids_t, torch.arange(n, device=device), caches, meta))


def _load(path, dtype, ops=None, device="cpu"):
    return load_model(path, ModelConfig.from_dir(path), dtype, torch.device(device), ops=ops)


PROMPT = [5, 17, 300, 42, 9, 1200, 77, 3, 4000, 12, 640, 88, 19, 2, 501, 33, 1024, 7, 250, 61]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bfloat16_model_with_selected_ops_equals_reference_ops(tiny_checkpoints, arch):
    """On CPU select_ops keeps every reference, so bf16 logits are those of REFERENCE_OPS."""
    path = tiny_checkpoints[arch]
    selected = _prefill_logits(_load(path, torch.bfloat16), PROMPT)
    assert torch.equal(selected, _prefill_logits(_load(path, torch.bfloat16, REFERENCE_OPS), PROMPT))


def _triton_elementwise_ops(fusion: str = "separate"):
    """REFERENCE_OPS with every elementwise op on its Triton kernel (interpreted on CPU).

    fusion: "separate" (the rotary, then the cache write), "into-cache" (the rotary kernel writes
    the cache) or "qk-fused" (q/k norms, rotary and the cache write in one kernel).
    """
    t, r = kernels._load_triton_ops(), REFERENCE_OPS
    # (None: the fold runs as the ops it folds, one after the other)
    return kernels._make_ops("reference", r.reshape_and_cache, r.paged_attention, t.rms_norm,
                             t.fused_add_rms_norm, t.silu_and_mul, t.rope, t.rotary,
                             t.rotary_into_cache if fusion != "separate" else None,
                             t.qk_norm_rotary if fusion == "qk-fused" else None)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float16, 5e-3)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("arch, fusion", [("llama", "separate"), ("llama", "into-cache"), ("qwen2", "into-cache"),
                                          ("qwen3", "separate"), ("qwen3", "into-cache"), ("qwen3", "qk-fused")])
def test_model_through_the_kernels_tracks_the_references(tiny_checkpoints, arch, fusion, dtype, tol):
    """The wiring: every layer's norms, residual adds, SwiGLU and rotary through the kernels.

    float32: the kernels are ~1e-7 off the references; the logits agree to the parity tests'
    1e-4 (measured: 2e-6 of the largest logit at most). float16: flipped 16-bit roundings (1e-3
    relative) travel through both layers; 5e-3 of the largest logit bounds them (measured: 7e-4
    at most), where a misplaced residual or an unrotated key moves logits by O(1).
    """
    path = tiny_checkpoints[arch]
    # NOTE: the kernels run where the tests run them: CUDA, or CPU under the interpreter.
    got = _prefill_logits(_load(path, dtype, _triton_elementwise_ops(fusion), DEVICE), PROMPT)
    want = _prefill_logits(_load(path, dtype, REFERENCE_OPS, DEVICE), PROMPT)
    torch.testing.assert_close(got, want, atol=tol * want.abs().max().item(), rtol=tol)


# --- GPU: the compiled kernels at the model's sizes ----------------------------------------------

@needs_cuda
@GPU_DTYPES
@pytest.mark.parametrize("num_tokens", [1, 256, 8192])
def test_gpu_fused_add_rms_norm(num_tokens, dtype):
    check_add_norm(*_add_norm_inputs((num_tokens, 2048), dtype))


@needs_cuda
@GPU_DTYPES
@pytest.mark.parametrize("num_tokens", [1, 256, 8192])
def test_gpu_silu_and_mul(num_tokens, dtype):
    gate_up = _randn((num_tokens, 2 * 8192), dtype, torch.Generator(device=DEVICE).manual_seed(5), scale=4.0)
    assert_within_steps(silu_and_mul(gate_up), silu_and_mul_ref(gate_up), 0.999)


@needs_cuda
@GPU_DTYPES
@pytest.mark.parametrize("num_tokens", [1, 256, 8192])
@pytest.mark.parametrize("heads", [(32, 8, 64), (16, 8, 128)], ids=["llama-1b", "qwen3-1.7b"])
def test_gpu_rotary(num_tokens, heads, dtype):
    q, k = _qkv(num_tokens, *heads, dtype)
    positions = torch.randint(0, 131072, (num_tokens,), device=DEVICE)
    check_rotary(q, k, positions, *_tables(heads[2], 131072, LLAMA3_SCALING))


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_gpu_bf16_model_through_the_kernels_tracks_the_references(tiny_checkpoints, arch):
    """The compiled path end to end (with the rotary that writes the cache, and for qwen3 the q/k
    norms in it too, as select_ops picks), within the same bound as transformers' bf16 check
    (test_model_forward)."""
    path = tiny_checkpoints[arch]
    selected = kernels.select_ops("cuda", torch.bfloat16)
    r = REFERENCE_OPS
    elementwise_ref = kernels._make_ops("triton", selected.reshape_and_cache, selected.paged_attention,
                                        r.rms_norm, r.fused_add_rms_norm, r.silu_and_mul, r.rope, r.rotary)
    got = _prefill_logits(_load(path, torch.bfloat16, selected, "cuda"), PROMPT)
    want = _prefill_logits(_load(path, torch.bfloat16, elementwise_ref, "cuda"), PROMPT)
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)


@needs_cuda
@GPU_DTYPES
@pytest.mark.parametrize("num_tokens", [1, 256, 8192])
def test_gpu_qk_norm_rotary(num_tokens, dtype):
    q, k = _qkv(num_tokens, 16, 8, 128, dtype)  # qwen3-0.6b's heads
    positions = torch.randint(0, 40960, (num_tokens,), device=DEVICE)
    check_qk_norm_rotary(q, k, positions, *_tables(128, 40960))


@needs_cuda
@GPU_DTYPES
@pytest.mark.parametrize("num_tokens", [1, 256, 8192])
@pytest.mark.parametrize("heads", [(32, 8, 64), (16, 8, 128), (32, 32, 96)], ids=["llama-1b", "qwen3-0.6b", "phi3-mini"])
def test_gpu_rotary_and_qk_norm_rotary_into_cache(num_tokens, heads, dtype):
    q, k, v = _qkv_and_v(num_tokens, *heads, dtype)
    positions = torch.randint(0, 40960, (num_tokens,), device=DEVICE)
    tables = (positions, *_tables(heads[2], 40960))
    check_into_cache(lambda kc, vc, slots: rotary_into_cache(q, k, v, *tables, kc, vc, slots),
                     lambda: rotary(q, k, *tables), q, k, v, num_tokens)
    weights = (torch.ones(heads[2], dtype=dtype, device=DEVICE) * 1.25,) * 2
    check_into_cache(lambda kc, vc, slots: qk_norm_rotary_into_cache(q, k, v, *weights, 1e-6, *tables, kc, vc, slots),
                     lambda: qk_norm_rotary(q, k, *weights, 1e-6, *tables), q, k, v, num_tokens)

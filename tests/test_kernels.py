"""The OpenAI Triton kernels against the torch references (kernels/pagedllm_kernels/reference.py, the oracle).

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets
TRITON_INTERPRET=1 before triton is imported) at small sizes, fp32 and fp16: the
interpreter's tl.dot mishandles bfloat16, so bf16 is covered by the GPU section only.
With CUDA, the GPU section runs the compiled kernels over ragged contexts up to 16k tokens.

Every batch lives in shuffled, non-contiguous blocks of a NaN-filled cache: a kernel that
reads one slot outside a sequence's context returns NaN and fails. Head sizes other than powers
of 2 (Phi-3-mini's 96, 80, 112) are padded inside the kernels: the lanes past head_dim would
read the next head's row or the NaN of the next slot, so a missing mask fails too.

Tolerance: the reference runs in float32 on the same (rounded) inputs; for each sequence the
kernel must give max |out - ref| <= TOL[dtype] * max |ref| over that sequence's rows (bf16 1e-2,
fp16 2e-3, fp32 1e-4). An emulation of the kernel's roundings (P and the output in the low
precision) gives about 3e-3 (bf16) and 4e-4 (fp16) at contexts 1 to 16k.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

import pagedllm_kernels as kernels  # noqa: E402
from pagedllm_kernels.reference import paged_attention_ref, reshape_and_cache_ref  # noqa: E402
from pagedllm_kernels.triton_paged_attention import choose_num_splits, paged_attention  # noqa: E402
from pagedllm_kernels.triton_reshape_and_cache import reshape_and_cache  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def make_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
               seed=0, pad_tokens=0, device=DEVICE):
    """A paged batch: each sequence's K/V in shuffled blocks of a NaN-filled cache.

    Returns the keyword arguments of `paged_attention` (scale included).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    value_cache = key_cache.clone()
    width = max(blocks_per_seq)
    tables = []
    for seq_len, nb in zip(seq_lens, blocks_per_seq):
        blocks = [perm.pop() for _ in range(nb)]
        tables.append(blocks + [0] * (width - nb))
        pos = torch.arange(seq_len, device=device)
        slots = torch.tensor(blocks, device=device)[pos // block_size] * block_size + pos % block_size
        k = torch.randn(seq_len, num_kv_heads, head_dim, generator=g, device=device).to(dtype)
        v = torch.randn(seq_len, num_kv_heads, head_dim, generator=g, device=device).to(dtype)
        reshape_and_cache_ref(k, v, key_cache, value_cache, slots)
    num_tokens = sum(query_lens) + pad_tokens
    query = torch.randn(num_tokens, num_heads, head_dim, generator=g, device=device).to(dtype)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    return dict(
        query=query,
        key_cache=key_cache,
        value_cache=value_cache,
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        scale=head_dim**-0.5,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )


def reference(batch) -> torch.Tensor:
    """The torch reference in float32 on the batch's (possibly low-precision) inputs."""
    return paged_attention_ref(
        batch["query"].float(), batch["key_cache"].float(), batch["value_cache"].float(),
        batch["block_tables"], batch["seq_lens"], batch["query_start_loc"], batch["scale"],
    )


def assert_matches(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, query_start_loc) -> None:
    """Per sequence: max |out - ref| <= TOL[dtype] * max |ref| over its rows; padding rows exactly 0.

    NOTE: per sequence, not over the batch: a 16k-token context averages to outputs ~100x
    smaller than a 1-token one, so a batch-wide bound would hide errors in long sequences.
    """
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.isfinite().all(), "NaN/inf in the output: a read outside some sequence's context"
    qsl = query_start_loc.tolist()
    for i in range(len(qsl) - 1):
        got, ref = out[qsl[i] : qsl[i + 1]].float(), expected[qsl[i] : qsl[i + 1]]
        err, bound = (got - ref).abs().max().item(), TOL[dtype] * ref.abs().max().item()
        assert err <= bound, f"sequence {i}: max abs err {err:.3g} > {bound:.3g} ({TOL[dtype]} * max|ref|)"
    assert torch.equal(out[qsl[-1] :], torch.zeros_like(out[qsl[-1] :])), "padding rows must stay zero"


def check_attention(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, **kwargs):
    batch = make_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                       pad_tokens=kwargs.pop("pad_tokens", 0))
    out = paged_attention(**batch, **kwargs)
    assert_matches(out, reference(batch), dtype, batch["query_start_loc"])
    return out


# ------------------------------------------------------------------------------------------
# Both devices: small sizes (the CPU interpreter runs each program in Python).

CASES = {
    "decode": ([1, 15, 33, 64], [1, 1, 1, 1]),
    "prefill": ([5, 16, 37], [5, 16, 37]),
    "chunked": ([20, 50], [7, 18]),  # new tokens after a cached prefix; chunk edges inside blocks
    "mixed": ([1, 17, 70, 9, 40], [1, 17, 1, 4, 33]),  # decode, prefill, decode, chunk, chunk
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("gqa", [1, 4, 8])
def test_attention_matches_reference(case, block_size, gqa):
    seq_lens, query_lens = CASES[case]
    check_attention(seq_lens, query_lens, 2 * gqa, 2, 64, block_size, torch.float32)


@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_attention_head_dim_128(case):
    check_attention(*CASES[case], 8, 2, 128, 16, torch.float32)


@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_attention_gqa_ratio_not_a_power_of_2(case):
    # Qwen2-0.5B's 14 query heads over 2 kv heads: 7 heads per kv head leave padded tile rows.
    check_attention(*CASES[case], 14, 2, 64, 16, torch.float32)


@pytest.mark.parametrize("block_size", [8, 12])
def test_attention_other_block_sizes(block_size):
    check_attention(*CASES["mixed"], 4, 1, 64, block_size, torch.float32)


@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_attention_float16(case):
    check_attention(*CASES[case], 8, 2, 64, 16, torch.float16)


@pytest.mark.parametrize("case, num_splits", [("decode", 2), ("decode", 4), ("decode", 8), ("mixed", 4)])
def test_split_kv_matches_reference(case, num_splits):
    # Short sequences leave some splits empty (and, in "mixed", some rows fully masked in a split).
    check_attention(*CASES[case], 8, 2, 64, 16, torch.float32, num_splits=num_splits)


def test_split_kv_is_chosen_for_a_small_long_decode_batch():
    seq_lens, query_lens = [1100], [1]
    # 1 sequence x 1 kv head on the interpreter's nominal 4 SMs: 2 splits of >= 512 keys.
    num_sms = 4 if not CUDA else torch.cuda.get_device_properties(0).multi_processor_count
    assert choose_num_splits(1, 1, 1, 1100, num_sms) >= 2
    check_attention(seq_lens, query_lens, 8, 1, 64, 16, torch.float32)


@pytest.mark.parametrize("args, expected", [
    ((64, 8, 1, 16384, 132), 1),  # batch already fills the GPU
    ((1, 8, 1, 16384, 132), 32),  # capped at _MAX_SPLITS
    ((4, 8, 1, 4096, 132), 8),  # by length: 4096 // 512
    ((4, 8, 1, 300, 132), 1),  # context too short to split
    ((1, 8, 7, 16384, 132), 1),  # prefill/mixed batches never split
    ((2, 8, 1, 16384, 132), 16),  # ceil(264 / 16) = 17 -> power of 2 below
])
def test_choose_num_splits(args, expected):
    assert choose_num_splits(*args) == expected


@pytest.mark.parametrize("num_splits", [1, 2])
def test_padding_rows_after_the_last_sequence_are_zero(num_splits):
    out = check_attention([10, 40], [3, 1], 4, 2, 64, 16, torch.float32, pad_tokens=5, num_splits=num_splits)
    assert torch.equal(out[4:], torch.zeros_like(out[4:]))


def test_query_may_be_a_strided_view_of_a_fused_qkv():
    batch = make_batch(*CASES["mixed"], 8, 2, 64, 16, torch.float32)
    q = batch["query"]
    qkv = torch.randn(q.shape[0], (8 + 2 * 2) * 64, device=DEVICE)
    qkv[:, : 8 * 64] = q.reshape(q.shape[0], -1)
    batch["query"] = qkv[:, : 8 * 64].view(q.shape[0], 8, 64)
    assert not batch["query"].is_contiguous()
    assert_matches(paged_attention(**batch), reference(batch), torch.float32, batch["query_start_loc"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 96, 80])
def test_reshape_and_cache_matches_reference_and_skips_padding(dtype, head_dim):
    num_blocks, block_size, kv, num_tokens = 6, 16, 2, 9
    key_cache = torch.full((num_blocks, block_size, kv, head_dim), -7.0, dtype=dtype, device=DEVICE)
    value_cache = key_cache.clone()
    # K and V as strided views of one fused [T, 2, kv, head_dim] tensor, as the model passes them.
    kv_out = torch.randn(num_tokens, 2, kv, head_dim, device=DEVICE).to(dtype)
    key, value = kv_out[:, 0], kv_out[:, 1]
    slots = torch.tensor([17, -1, 3, 95, -1, 40, 1, 64, 31], device=DEVICE)
    reshape_and_cache(key, value, key_cache, value_cache, slots)
    expected_k, expected_v = torch.full_like(key_cache, -7.0), torch.full_like(value_cache, -7.0)
    reshape_and_cache_ref(key, value, expected_k, expected_v, slots)
    assert torch.equal(key_cache, expected_k) and torch.equal(value_cache, expected_v)
    assert (key_cache == -7.0).all(-1).all(-1).sum() == num_blocks * block_size - 7  # 7 real slots written


def test_reshape_and_cache_takes_int32_slots():
    key_cache = torch.zeros(2, 8, 1, 16, device=DEVICE)
    value_cache = torch.zeros_like(key_cache)
    key, value = torch.ones(2, 1, 16, device=DEVICE), torch.full((2, 1, 16), 2.0, device=DEVICE)
    reshape_and_cache(key, value, key_cache, value_cache, torch.tensor([5, 11], dtype=torch.int32, device=DEVICE))
    assert key_cache[0, 5].eq(1).all() and value_cache[1, 3].eq(2).all()
    assert key_cache.count_nonzero() == value_cache.count_nonzero() == 2 * 16


@pytest.mark.parametrize("changes, match", [
    (lambda b: dict(query=b["query"].half()), "query"),
    (lambda b: dict(query=b["query"][..., :47], key_cache=b["key_cache"][..., :47].contiguous(),
                    value_cache=b["value_cache"][..., :47].contiguous()), "head_dim"),
    (lambda b: dict(query=b["query"][..., :8], key_cache=b["key_cache"][..., :8].contiguous(),
                    value_cache=b["value_cache"][..., :8].contiguous()), "head_dim"),
    (lambda b: dict(query=b["query"].transpose(0, 2).contiguous().transpose(0, 2)), "query"),
    (lambda b: dict(block_tables=b["block_tables"].long()), "block_tables"),
    (lambda b: dict(seq_lens=b["seq_lens"].long()), "seq_lens"),
    (lambda b: dict(query_start_loc=b["query_start_loc"].long()), "query_start_loc"),
    (lambda b: dict(num_splits=3), "num_splits"),
])
def test_paged_attention_rejects_what_it_cannot_take(changes, match):
    batch = make_batch([10], [3], 4, 2, 64, 16, torch.float32)
    batch.update(changes(batch))
    with pytest.raises(ValueError, match=match):
        paged_attention(**batch)


def test_reshape_and_cache_rejects_what_it_cannot_take():
    key_cache = torch.zeros(2, 8, 2, 64, device=DEVICE)
    key = torch.zeros(3, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="key"):
        reshape_and_cache(key.half(), key, key_cache, key_cache.clone(), torch.arange(3, device=DEVICE))
    with pytest.raises(ValueError, match="value"):
        reshape_and_cache(key, key.transpose(1, 2).contiguous().transpose(1, 2), key_cache, key_cache.clone(),
                          torch.arange(3, device=DEVICE))
    with pytest.raises(ValueError, match="slot_mapping"):
        reshape_and_cache(key, key, key_cache, key_cache.clone(), torch.arange(3, device=DEVICE).float())


def test_cpu_tensors_take_the_reference():
    # NOTE: the CPU engine must never run the interpreter, even though TRITON_INTERPRET is set here.
    assert kernels.select_ops("cpu", torch.float32) is kernels.REFERENCE_OPS
    assert kernels.select_ops("cpu", torch.bfloat16) is kernels.REFERENCE_OPS


def test_a_bad_cache_is_rejected():
    key_cache = torch.zeros(2, 8, 2, 64, device=DEVICE)
    key = torch.zeros(3, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="value_cache"):
        reshape_and_cache(key, key, key_cache, key_cache[:1].clone(), torch.arange(3, device=DEVICE))
    with pytest.raises(ValueError, match="kv_cache"):
        kernels.check_kv_cache(torch.zeros(2, 4, 16, 2), kernels.REFERENCE_OPS)


@pytest.mark.parametrize("bad, match", [
    (lambda b: dict(query=torch.randn(3, 4, 8, device=DEVICE)), "query"),
    (lambda b: dict(query=torch.randn(3, 3, 64, device=DEVICE)), "query"),
    (lambda b: dict(block_tables=torch.zeros(2, 2, dtype=torch.int32, device=DEVICE)), "block_tables"),
    (lambda b: dict(query_start_loc=torch.tensor([0, 1, 3], dtype=torch.int32, device=DEVICE)),
     "query_start_loc"),
    (lambda b: dict(value_cache=b["value_cache"][:, :8].contiguous()), "value_cache"),
])
def test_paged_attention_rejects_mismatched_shapes(bad, match):
    batch = make_batch([10], [3], 4, 2, 64, 16, torch.float32)
    batch.update(bad(batch))
    with pytest.raises(ValueError, match=match):
        paged_attention(**batch)


def test_reshape_and_cache_rejects_mismatched_shapes():
    key_cache = torch.zeros(2, 8, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="key"):
        reshape_and_cache(torch.zeros(3, 4, 64, device=DEVICE), torch.zeros(3, 2, 64, device=DEVICE),
                          key_cache, key_cache.clone(), torch.arange(3, device=DEVICE))
    with pytest.raises(ValueError, match="slot_mapping"):
        reshape_and_cache(torch.zeros(3, 2, 64, device=DEVICE), torch.zeros(3, 2, 64, device=DEVICE),
                          key_cache, key_cache.clone(), torch.arange(4, device=DEVICE))


# ------------------------------------------------------------------------------------------
# Sliding window and soft-capping (Mistral, Gemma): both devices, small sizes.


def check_window_attention(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
                           window=None, softcap=None, **kwargs):
    """The kernel against the reference with a window / soft cap; the K/V slots before each
    sequence's window are then filled with NaN, so a kernel that reads one of them fails."""
    batch = make_batch(seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_attention_ref(
        batch["query"].float(), batch["key_cache"].float(), batch["value_cache"].float(),
        batch["block_tables"], batch["seq_lens"], batch["query_start_loc"], batch["scale"], window, softcap)
    if window is not None:
        for i, (seq_len, n) in enumerate(zip(seq_lens, query_lens)):
            pos = torch.arange(max(0, seq_len - n - window + 1), device=DEVICE)  # keys no query sees
            blocks = batch["block_tables"][i, pos // block_size].long()
            batch["key_cache"][blocks, pos % block_size] = float("nan")
            batch["value_cache"][blocks, pos % block_size] = float("nan")
    out = paged_attention(**batch, window=window, softcap=softcap, **kwargs)
    assert_matches(out, expected, dtype, batch["query_start_loc"])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("window", [1, 7, 16, 40])
def test_sliding_window_matches_reference(case, window):
    check_window_attention(*CASES[case], 8, 2, 64, 16, torch.float32, window=window)


def test_sliding_window_long_prefill_skips_the_tiles_before_it():
    # 200 new tokens after 100 cached ones, a 33-token window: most key tiles are skipped.
    check_window_attention([300, 64], [200, 1], 4, 2, 64, 16, torch.float32, window=33)


@pytest.mark.parametrize("num_splits", [2, 4])
def test_sliding_window_with_split_kv(num_splits):
    check_window_attention(*CASES["decode"], 8, 2, 64, 16, torch.float32, window=20, num_splits=num_splits)


@pytest.mark.parametrize("case", ["decode", "mixed", "chunked"])
@pytest.mark.parametrize("window", [None, 12])
def test_softcap_matches_reference(case, window):
    # A cap of 2 bends every score of these random inputs: a kernel without it fails.
    check_window_attention(*CASES[case], 8, 2, 64, 16, torch.float32, window=window, softcap=2.0)


def test_sliding_window_float16():
    check_window_attention(*CASES["mixed"], 8, 2, 64, 16, torch.float16, window=9, softcap=30.0)


@pytest.mark.parametrize("window, softcap, match", [(0, None, "window"), (None, 0.0, "softcap")])
def test_window_and_softcap_are_checked(window, softcap, match):
    batch = make_batch([10], [3], 4, 2, 64, 16, torch.float32)
    with pytest.raises(ValueError, match=match):
        paged_attention(**batch, window=window, softcap=softcap)


# ------------------------------------------------------------------------------------------
# Head sizes other than powers of 2 (Phi-3-mini's 96): padded inside the kernels, both devices.

PADDED_HEAD_DIMS = [96, 80, 112]
INTERPRETER_DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])


@INTERPRETER_DTYPES
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("head_dim", PADDED_HEAD_DIMS)
def test_padded_head_dim_matches_reference(case, head_dim, dtype):
    check_attention(*CASES[case], 8, 2, head_dim, 16, dtype)


@pytest.mark.parametrize("head_dim", [18, 24, 200])  # padded to 32, 32, 256
def test_small_and_large_padded_head_dims(head_dim):
    check_attention(*CASES["mixed"], 4, 2, head_dim, 16, torch.float32)


@INTERPRETER_DTYPES
@pytest.mark.parametrize("case, num_splits", [("decode", 2), ("decode", 8), ("mixed", 4)])
@pytest.mark.parametrize("head_dim", [96, 112])
def test_padded_head_dim_with_split_kv(case, num_splits, head_dim, dtype):
    check_attention(*CASES[case], 8, 2, head_dim, 16, dtype, num_splits=num_splits, pad_tokens=3)


@pytest.mark.parametrize("case", ["decode", "chunked", "mixed"])
@pytest.mark.parametrize("window, softcap, num_splits", [(7, None, None), (40, None, None), (None, 2.0, None),
                                                         (12, 2.0, None), (20, 2.0, 4)])
def test_padded_head_dim_with_window_and_softcap(case, window, softcap, num_splits):
    check_window_attention(*CASES[case], 8, 2, 96, 16, torch.float32, window=window, softcap=softcap,
                           num_splits=num_splits)


def test_padded_head_dim_with_window_and_softcap_float16():
    check_window_attention(*CASES["mixed"], 8, 2, 80, 16, torch.float16, window=9, softcap=30.0)


@pytest.mark.parametrize("head_dim", [16, 18, 80, 96, 112, 256])
def test_check_kv_cache_takes_even_head_dims_in_16_to_256(head_dim):
    triton_ops = kernels._load_triton_ops()  # the kernels' rule, without a GPU
    kernels.check_kv_cache(torch.zeros(2, 3, 16, 2, head_dim), triton_ops)


@pytest.mark.parametrize("head_dim", [8, 14, 95, 97, 258, 512])
def test_check_kv_cache_refuses_other_head_dims(head_dim):
    kv_cache = torch.zeros(2, 3, 16, 2, head_dim)
    with pytest.raises(ValueError, match=rf"kv_cache: head_dim {head_dim} .*kernel_backend='reference'"):
        kernels.check_kv_cache(kv_cache, kernels._load_triton_ops())
    kernels.check_kv_cache(kv_cache, kernels.REFERENCE_OPS)  # the reference takes any head size


@pytest.mark.parametrize("head_dim", [14, 97, 512])
def test_reshape_and_cache_refuses_other_head_dims(head_dim):
    key_cache = torch.zeros(2, 8, 2, head_dim, device=DEVICE)
    key = torch.zeros(3, 2, head_dim, device=DEVICE)
    with pytest.raises(ValueError, match=f"key_cache: head_dim {head_dim}"):
        reshape_and_cache(key, key, key_cache, key_cache.clone(), torch.arange(3, device=DEVICE))


def _logits_through(path, ops, dtype, device) -> torch.Tensor:
    """The model at `path` through `ops`: a 40-token prefill, a 20-token chunk, then 10
    single-token decodes over shuffled cache blocks; every step's logits."""
    from pagedllm.models.config import ModelConfig
    from pagedllm.models.registry import load_model
    from paged_steps import stepwise_logits

    config = ModelConfig.from_dir(path)
    prompt = torch.randint(3, 1000, (70,), generator=torch.Generator().manual_seed(0))
    model = load_model(path, config, dtype, torch.device(device), ops=ops)
    kernels.check_kv_cache(torch.zeros(2, 1, 16, config.num_key_value_heads, config.head_dim, dtype=dtype,
                                       device=device), ops)
    steps = [(0, 40), (40, 60), *((p, p + 1) for p in range(60, 70))]
    return stepwise_logits(model, config, prompt, steps, device, dtype)


@pytest.fixture(scope="module")
def phi3_head_dim_96(tmp_path_factory) -> str:
    """A tiny Phi-3 with Phi-3-mini's head size (4 heads of 96, its 40-token sliding window)."""
    from pagedllm_tools.family_models import make_family_checkpoint

    return make_family_checkpoint("phi3", tmp_path_factory.mktemp("phi3_96"), head_dim=96)


def test_phi3_head_dim_96_through_every_kernel(phi3_head_dim_96):
    """Every Triton kernel the model runs (norms, rotary into the cache, windowed paged attention)
    at head_dim 96, against the references: float32 logits within 1e-3."""
    got = _logits_through(phi3_head_dim_96, kernels._load_triton_ops(), torch.float32, DEVICE)
    want = _logits_through(phi3_head_dim_96, kernels.REFERENCE_OPS, torch.float32, DEVICE)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------
# GPU only: the compiled kernels at long, ragged contexts in every dtype.

GPU_SEQ_LENS = [1, 17, 1000, 4096, 16384]
GPU_QUERY_LENS = {
    "decode": [1, 1, 1, 1, 1],
    # decode, two full prefills, two chunks over long cached prefixes
    "chunked": [1, 17, 1000, 512, 64],
}


@needs_cuda
@pytest.mark.parametrize("mode", sorted(GPU_QUERY_LENS))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("gqa", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_attention_matches_reference(mode, block_size, gqa, head_dim, dtype):
    # Decode here is 5 sequences x 2 kv heads: the launcher picks split-KV on its own.
    check_attention(GPU_SEQ_LENS, GPU_QUERY_LENS[mode], 2 * gqa, 2, head_dim, block_size, dtype)


@needs_cuda
@pytest.mark.parametrize("mode", sorted(GPU_QUERY_LENS))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [96, 128])
def test_gpu_attention_float32(mode, block_size, head_dim):
    check_attention(GPU_SEQ_LENS, GPU_QUERY_LENS[mode], 8, 2, head_dim, block_size, torch.float32)


@needs_cuda
@pytest.mark.parametrize("num_splits", [1, 4, 32])
@pytest.mark.parametrize("head_dim", [64, 96])
def test_gpu_decode_with_and_without_split_kv(num_splits, head_dim):
    check_attention(GPU_SEQ_LENS, GPU_QUERY_LENS["decode"], 32, 8, head_dim, 16, torch.bfloat16,
                    num_splits=num_splits, pad_tokens=3)


@needs_cuda
@pytest.mark.parametrize("mode", sorted(GPU_QUERY_LENS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("window, softcap", [(4096, None), (1000, 50.0), (None, 30.0)])
@pytest.mark.parametrize("head_dim", [96, 128])
def test_gpu_sliding_window_and_softcap(mode, dtype, window, softcap, head_dim):
    check_window_attention(GPU_SEQ_LENS, GPU_QUERY_LENS[mode], 8, 2, head_dim, 16, dtype, window=window,
                           softcap=softcap)


@needs_cuda
def test_gpu_kernels_are_the_cuda_backend():
    assert kernels.select_ops("cuda", torch.bfloat16).backend == "triton"
    assert kernels.select_ops("cuda", torch.bfloat16, "reference") is kernels.REFERENCE_OPS


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_model_forward_triton_equals_reference(tiny_checkpoints, dtype):
    def run(backend: str) -> torch.Tensor:
        return _logits_through(tiny_checkpoints["qwen3"], kernels.select_ops("cuda", dtype, backend), dtype, "cuda")

    triton_logits = run("auto")
    reference_logits = run("reference")
    if dtype == torch.float32:
        torch.testing.assert_close(triton_logits, reference_logits, atol=1e-3, rtol=1e-3)
    else:
        # NOTE: the bf16 reference rounds scores to bf16, the kernel keeps them in fp32; through two
        # layers that moved logits by up to 2.4% of max|logit| (mean 0.2%) in a CPU emulation.
        diff, peak = (triton_logits - reference_logits).abs(), reference_logits.abs().max()
        assert diff.max() <= 5e-2 * peak and diff.mean() <= 5e-3 * peak, (diff.max(), diff.mean(), peak)


@needs_cuda
def test_gpu_phi3_head_dim_96_bf16_through_every_kernel(phi3_head_dim_96):
    """The compiled kernels at head_dim 96, within the bf16 bound of the model test above."""
    got = _logits_through(phi3_head_dim_96, kernels.select_ops("cuda", torch.bfloat16), torch.bfloat16, "cuda")
    want = _logits_through(phi3_head_dim_96, kernels.REFERENCE_OPS, torch.bfloat16, "cuda")
    diff, peak = (got - want).abs(), want.abs().max()
    assert diff.max() <= 5e-2 * peak and diff.mean() <= 5e-3 * peak, (diff.max(), diff.mean(), peak)

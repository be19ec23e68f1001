"""Sampler: greedy, seeded reproducibility, penalties, top_k/top_p/min_p, suppression, logprobs."""
from __future__ import annotations

import pytest
import torch

from pagedllm.sampler import Sampler, SamplingRow
from pagedllm.sampling_params import SamplingParams


def row(prompt=(), output=(), generator=None, suppress=(), **params) -> SamplingRow:
    return SamplingRow(SamplingParams(**params), list(prompt), list(output), generator, suppress)


def draws(sampler: Sampler, logits_row: list[float], n: int = 4000, **params) -> set[int]:
    """The set of tokens sampled in n independent draws of one row (one batched call)."""
    logits = torch.tensor([logits_row] * n)
    return set(sampler(logits, [row(**params) for _ in range(n)]).token_ids)


def test_greedy_equals_argmax():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    out = Sampler()(logits, [row(temperature=0) for _ in range(8)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 8


def test_greedy_rows_stay_argmax_in_a_mixed_batch():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    rows = [row(temperature=0) if i % 2 else row(temperature=1.5) for i in range(6)]
    out = Sampler()(logits, rows)
    assert [out.token_ids[i] for i in (1, 3, 5)] == logits.argmax(-1)[[1, 3, 5]].tolist()


def test_top_k_1_equals_greedy_at_high_temperature():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(2))
    out = Sampler(seed=3)(logits, [row(temperature=50.0, top_k=1) for _ in range(64)])
    assert out.token_ids == logits.argmax(-1).tolist()


def test_does_not_modify_logits():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(4))
    before = logits.clone()
    Sampler()(logits, [row(temperature=0.7, top_k=5, top_p=0.8, min_p=0.1,
                           repetition_penalty=1.3, output=[1, 2], suppress=[3])] * 3)
    assert torch.equal(logits, before)


def test_row_count_mismatch_raises():
    with pytest.raises(ValueError, match="rows"):
        Sampler()(torch.zeros(2, 10), [row()])


def _seeded_tokens(pos: int, batch: int, target: torch.Tensor, crowd_seed: int) -> list[int]:
    """6 tokens of a seed=1234 row sitting at `pos` in a batch of `batch` other rows."""
    sampler = Sampler(seed=crowd_seed)
    gen = sampler.make_generator(1234)
    crowd_gens = [sampler.make_generator(crowd_seed * 100 + i) for i in range(batch)]
    g = torch.Generator().manual_seed(crowd_seed)
    tokens = []
    for _ in range(6):
        logits = torch.randn(batch, target.shape[0], generator=g)
        logits[pos] = target
        rows = [row(temperature=0.8, generator=crowd_gens[i], seed=i) if i % 3 == 0 else
                row(temperature=1.2, top_k=10, logprobs=2) if i % 3 == 1 else
                row(temperature=0) for i in range(batch)]
        rows[pos] = row(temperature=1.0, top_p=0.95, generator=gen, seed=1234)
        tokens.append(sampler(logits, rows).token_ids[pos])
    return tokens


def test_seeded_row_reproduces_alone_and_in_a_crowd():
    target = torch.randn(500, generator=torch.Generator().manual_seed(5)) * 0.5  # flat-ish
    alone = _seeded_tokens(0, 1, target, crowd_seed=0)
    assert len(set(alone)) > 1  # it really samples
    assert _seeded_tokens(0, 1, target, crowd_seed=99) == alone
    assert _seeded_tokens(4, 9, target, crowd_seed=1) == alone
    assert _seeded_tokens(7, 8, target, crowd_seed=2) == alone
    assert _seeded_tokens(0, 5, target, crowd_seed=3) == alone


def test_different_seeds_give_different_tokens():
    target = torch.randn(1, 500, generator=torch.Generator().manual_seed(6)) * 0.1
    s = Sampler()
    toks = {s(target, [row(generator=s.make_generator(k), seed=k)]).token_ids[0]
            for k in range(20)}
    assert len(toks) > 5


def test_sampling_follows_the_softmax_at_the_temperature():
    logits = [1.0, 0.0, -1.0, 0.5]
    temp, n = 0.7, 20000
    out = Sampler(seed=7)(torch.tensor([logits] * n), [row(temperature=temp)] * n).token_ids
    freq = torch.bincount(torch.tensor(out), minlength=4).float() / n
    expected = torch.softmax(torch.tensor(logits) / temp, dim=0)
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)


# ----- penalties: margins on both sides of the formula's value pin it down -----------------

def _winner(logits_row, **kw) -> int:
    return Sampler()(torch.tensor([logits_row]), [row(temperature=0, **kw)]).token_ids[0]


@pytest.mark.parametrize("where", ["prompt", "output"])
def test_repetition_penalty_divides_positive_logits(where):
    seen = {where: [0]}
    assert _winner([2.0, 0.99], repetition_penalty=2.0, **seen) == 0  # 2.0 / 2 = 1.0 > 0.99
    assert _winner([2.0, 1.01], repetition_penalty=2.0, **seen) == 1
    assert _winner([2.0, 1.01], repetition_penalty=1.0, **seen) == 0


def test_repetition_penalty_multiplies_negative_logits():
    # -1.0 * 2 = -2.0
    assert _winner([-1.0, -1.99], repetition_penalty=2.0, prompt=[0]) == 1
    assert _winner([-1.0, -2.01], repetition_penalty=2.0, prompt=[0]) == 0
    assert _winner([-1.0, -1.5], repetition_penalty=0.5, prompt=[1]) == 1  # < 1 rewards: -0.75


def test_repetition_penalty_ignores_unseen_tokens():
    assert _winner([2.0, 1.5], repetition_penalty=3.0, prompt=[1], output=[1]) == 0


def test_frequency_penalty_per_occurrence_in_output():
    # token 0 occurs twice in the output: 3.0 - 0.5 * 2 = 2.0
    assert _winner([3.0, 1.99], frequency_penalty=0.5, output=[0, 0]) == 0
    assert _winner([3.0, 2.01], frequency_penalty=0.5, output=[0, 0]) == 1


def test_presence_penalty_once_whatever_the_count():
    # 3.0 - 0.5 = 2.5 however often token 0 occurred
    assert _winner([3.0, 2.49], presence_penalty=0.5, output=[0, 0, 0]) == 0
    assert _winner([3.0, 2.51], presence_penalty=0.5, output=[0, 0, 0]) == 1


def test_frequency_and_presence_add_up():
    # 3.0 - (0.5 * 2 + 0.5) = 1.5
    assert _winner([3.0, 1.49], frequency_penalty=0.5, presence_penalty=0.5, output=[0, 0]) == 0
    assert _winner([3.0, 1.51], frequency_penalty=0.5, presence_penalty=0.5, output=[0, 0]) == 1


def test_frequency_and_presence_ignore_the_prompt():
    assert _winner([3.0, 2.9], frequency_penalty=2.0, presence_penalty=2.0, prompt=[0, 0]) == 0


def test_negative_penalties_reward():
    assert _winner([1.0, 2.0], frequency_penalty=-1.0, presence_penalty=-0.5, output=[0]) == 0


# ----- truncation: never outside the allowed set, and the whole set is used ---------------

PROBS = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
LOGITS = PROBS.log().tolist()


@pytest.mark.parametrize("params, allowed", [
    ({"top_k": 2}, {0, 1}),
    ({"top_k": 3}, {0, 1, 2}),
    ({"top_p": 0.75}, {0, 1}),        # 0.5 < 0.75 keeps token 1; 0.8 >= 0.75 drops token 2
    ({"top_p": 0.85}, {0, 1, 2}),
    ({"top_p": 0.3}, {0}),            # always at least one
    ({"min_p": 0.25}, {0, 1}),        # threshold 0.125
    ({"min_p": 0.15}, {0, 1, 2}),     # threshold 0.075
    ({"top_k": 3, "top_p": 0.75}, {0, 1}),
    ({"top_k": 4, "min_p": 0.7}, {0}),  # threshold 0.35
    ({}, {0, 1, 2, 3, 4}),
])
def test_truncation_samples_exactly_the_allowed_set(params, allowed):
    assert draws(Sampler(seed=8), LOGITS, n=4000, temperature=1.0, **params) == allowed


def test_truncation_with_random_logits_and_mixed_rows():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(300, 64, generator=g) * 3
    rows = [row(temperature=1.0, top_k=5) if i % 3 == 0 else
            row(temperature=1.0, top_p=0.5) if i % 3 == 1 else
            row(temperature=1.0, min_p=0.3) for i in range(300)]
    out = Sampler(seed=10)(logits, rows).token_ids
    probs = logits.softmax(-1)
    for i, t in enumerate(out):
        p, order = probs[i], probs[i].argsort(descending=True).tolist()
        if i % 3 == 0:
            assert t in order[:5]
        elif i % 3 == 1:
            rank = order.index(t)
            assert p[order[:rank]].sum() < 0.5 + 1e-6
        else:
            assert p[t] >= 0.3 * p.max() - 1e-6


def test_suppressed_tokens_never_sampled():
    logits = [10.0, 9.0, 0.0, 0.0]
    assert draws(Sampler(), logits, n=2000, temperature=2.0, suppress=[0, 1]) == {2, 3}
    assert _winner(logits, suppress=[0]) == 1
    assert _winner(logits, suppress=[0, 99]) == 1  # out-of-vocab ids are ignored


# ----- logprobs ---------------------------------------------------------------------------

def test_logprobs_are_raw_top_n_plus_sampled():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 40, generator=g)
    rows = [row(temperature=1.0, logprobs=3, repetition_penalty=1.5, output=[0, 1]),
            row(temperature=0, logprobs=0),
            row(temperature=0.5),
            row(temperature=1.0, top_k=2, logprobs=5, suppress=[int(logits[3].argmax())])]
    out = Sampler(seed=12)(logits, rows)
    raw = torch.log_softmax(logits, dim=-1)
    for i, n in ((0, 3), (1, 0), (3, 5)):
        lp, tok = out.logprobs[i], out.token_ids[i]
        top = raw[i].topk(n).indices.tolist()
        assert set(lp) == set(top) | {tok}
        for t, v in lp.items():
            assert v == pytest.approx(raw[i, t].item(), abs=1e-6)
    assert out.logprobs[2] is None
    assert out.logprobs[1] == {out.token_ids[1]: pytest.approx(raw[1].max().item(), abs=1e-6)}
    assert out.token_ids[3] != int(logits[3].argmax())  # processed logits decided the sample


def test_logprobs_include_a_sampled_token_outside_the_top_n():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0]])
    out = Sampler()(logits, [row(temperature=0, logprobs=1, suppress=[0, 1])])
    assert out.token_ids[0] in (2, 3)
    assert set(out.logprobs[0]) == {0, out.token_ids[0]}


def test_top_k_per_row_in_one_batch():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(13))
    ks = [1, 3, 0, 100]  # 0: disabled; 100 > vocab: everything
    rows = [row(temperature=5.0, top_k=k) for k in ks] * 500
    out = Sampler(seed=14)(logits.repeat(500, 1), rows).token_ids
    for i, k in ((0, 1), (1, 3)):
        assert set(out[i::4]) == set(logits[i].argsort(descending=True)[:k].tolist())
    assert len(set(out[2::4])) > 20 and len(set(out[3::4])) > 20


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_sample_what_their_float32_upcast_samples(dtype):
    """The runner hands the sampler the model's own logits (no float32 copy for a greedy
    argmax). 16-bit values upcast exactly, so every kind of row picks the same token either way,
    ties (many in 16 bits) included: the first maximal index wins in both."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 300, generator=g) * 4).to(dtype)
    logits[0, 7] = logits[0, 9] = logits[0].max() + 1  # a tie: index 7 must win
    kinds = [dict(temperature=0), dict(temperature=0, logprobs=2),
             dict(temperature=0.8, top_k=20, seed=5), dict(temperature=0, repetition_penalty=1.3)]
    for kind in kinds:
        def rows():
            return [row(prompt=[1, 2], generator=torch.Generator().manual_seed(9), **kind)
                    for _ in range(6)]
        got, want = Sampler(seed=1)(logits, rows()), Sampler(seed=1)(logits.float(), rows())
        assert got.token_ids == want.token_ids, kind
        assert got.logprobs == want.logprobs
    assert Sampler()(logits, [row(temperature=0)] * 6).token_ids[0] == 7

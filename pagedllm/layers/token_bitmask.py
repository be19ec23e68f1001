"""Grammar bitmasks applied to logits: a constrained row keeps only the tokens its grammar allows.

A bitmask row is int32 [ceil(vocab / 32)], bit `t % 32` of word `t // 32` set when token t is
allowed (xgrammar's layout). Plain torch, on the logits' device: the bits are unpacked to a bool
[rows, vocab] and everything else is set to -inf. Rows without a mask are left as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """bool [rows, vocab] from int32 [rows, words] (words * 32 >= vocab)."""
    shifts = _SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = _SHIFTS[bitmask.device] = torch.arange(32, dtype=torch.int32,
                                                        device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (arithmetic shift: bit 31 reads right too)
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].bool()


def apply_token_bitmasks(logits: torch.Tensor,
                         masks: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """`logits` [rows, vocab] with each masked row's disallowed tokens at -inf (a new tensor).

    Args:
        logits: one row per sampling request.
        masks: per row, an int32 [words] bitmask (on any device), or None (unconstrained).
    """
    rows = [i for i, m in enumerate(masks) if m is not None]
    vocab = logits.shape[1]
    stacked = torch.stack([masks[i] for i in rows]).to(logits.device, non_blocking=True)
    words = stacked.shape[1]
    if words * 32 < vocab:
        raise ValueError(f"a token bitmask of {words} words cannot cover {vocab} logits")
    allowed = unpack_bitmask(stacked, vocab)
    if len(rows) == logits.shape[0]:
        return logits.masked_fill(~allowed, float("-inf"))
    keep = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    keep[torch.tensor(rows, device=logits.device)] = allowed
    return logits.masked_fill(~keep, float("-inf"))

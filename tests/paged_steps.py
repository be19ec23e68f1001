"""One sequence through a model step by step over shuffled paged-cache blocks: the logits of each.

The forward-level checks (tests/test_model_families.py, tests/test_kernels.py) run a prefill, a
chunk over the cached prefix, then single-token decodes, as the engine does, without the engine.
"""
from __future__ import annotations

import torch

from pagedllm.layers.attention import AttentionMetadata


def stepwise_logits(model, config, ids: torch.Tensor, steps: list[tuple[int, int]], device,
                    dtype: torch.dtype = torch.float32, block_size: int = 16) -> torch.Tensor:
    """Logits of ids[start:end] for each (start, end) in `steps`, in order, concatenated; the
    sequence's blocks are a seeded shuffle of the cache's, so a wrong block table shows."""
    num_blocks = -(-steps[-1][1] // block_size)
    table = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1)).to(torch.int32)
    shape = (2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
    logits = []
    with torch.inference_mode():
        for start, end in steps:
            pos = torch.arange(start, end)
            meta = AttentionMetadata(
                slot_mapping=(table[pos // block_size].long() * block_size + pos % block_size).to(device),
                block_tables=table[None].to(device),
                seq_lens=torch.tensor([end], dtype=torch.int32, device=device),
                query_start_loc=torch.tensor([0, end - start], dtype=torch.int32, device=device),
                max_query_len=end - start, max_seq_len=end)
            hidden = model(ids[start:end].to(device), pos.to(device), caches, meta)
            logits.append(model.compute_logits(hidden).float())
    return torch.cat(logits)

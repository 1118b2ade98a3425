"""Removing dropped tokens from a sequence, and putting them back (spec section 2.5, "ABSENT").

Absent tokens (no data) and tokens the encoder must not see are not masked
inside attention: they are removed, so no compute is spent on them. Each
sample keeps a different number of tokens, so the kept ones are gathered to
the front and the batch is right-padded to its longest sample; a key mask
stops every query from attending to the padding.
"""

from __future__ import annotations

import torch


def pack(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the kept tokens of each sample to the front, in their original order.

    x (B, N, D), keep (B, N) -> packed (B, L, D), real (B, L), index (B, L),
    with L the largest number of kept tokens in the batch (at least 1);
    `real` marks kept tokens, `index` their position in x.
    """
    B, N, D = x.shape
    if bool(keep.all()):  # nothing to remove: skip the gather
        return x, torch.ones_like(keep), torch.arange(N, device=x.device).expand(B, N)
    lengths = keep.sum(dim=1)  # (B,)
    L = max(int(lengths.max()), 1)
    index = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :L]  # (B, L): kept first
    packed = x.gather(1, index.unsqueeze(-1).expand(B, L, D))  # (B, L, D)
    real = torch.arange(L, device=x.device)[None, :] < lengths[:, None]  # (B, L)
    return packed, real, index


def unpack(packed: torch.Tensor, real: torch.Tensor, index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of `pack`: (B, L, D) -> (B, N, D), zeros where nothing was kept."""
    B, L, D = packed.shape
    if L == num_tokens and bool(real.all()):  # `pack` kept every token, in order
        return packed
    kept = torch.where(real.unsqueeze(-1), packed, torch.zeros_like(packed))
    return packed.new_zeros(B, num_tokens, D).scatter(1, index.unsqueeze(-1).expand(B, L, D), kept)  # (B, N, D)


def key_mask(real: torch.Tensor) -> torch.Tensor | None:
    """(B, L) real tokens -> boolean attention mask (B, 1, 1, L) over keys, or None when nothing is padding.

    Queries see every real key of their sample. Key 0 is always allowed, so a
    sample that kept no token at all still has a finite (and discarded) output
    rather than NaN, which would poison the backward pass.
    """
    if bool(real.all()):
        return None  # no padding: SDPA may use its fastest kernel
    mask = real.clone()
    mask[:, 0] = True
    return mask[:, None, None, :]  # (B, 1, 1, L)

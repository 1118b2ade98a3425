"""The SpaceNit encoder (spec sections 2.1-2.2; bandset-merge and hybrid-patch-size seeds).

    images -> MultiSensorTokenizer -> [BandsetMerge] -> drop absent / hidden tokens
           -> registers + N x TransformerBlock (RoPE) [BandsetMerge after block k] -> RMSNorm
           -> [PatchUpsampler]

Tokens the encoder does not see (absent, or outside `visible`) are removed
from the sequence (`packing.py`), not masked: no compute is spent on them.
Outputs are scattered back to their sequence positions, zeros elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from spacenit.arch.bandset_merge import BandsetMerge, merge_sequence
from spacenit.arch.layout import TokenLayout
from spacenit.arch.model_config import ModelConfig
from spacenit.arch.norm import RMSNorm
from spacenit.arch.packing import key_mask, pack, unpack
from spacenit.arch.rope import SpatioTemporalRoPE
from spacenit.arch.tokenizer import MultiSensorTokenizer, Tokens
from spacenit.arch.transformer import TransformerStack
from spacenit.arch.upsampler import PatchUpsampler, upsample_mask
from spacenit.sensors import SensorSpec


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig, sensors: list[SensorSpec]) -> None:
        super().__init__()
        c = self.config = config
        self.tokenizer = MultiSensorTokenizer(sensors, c.tokenization, c.dim, c.base_patch_size, c.reference_gsd_m)
        self.rope = SpatioTemporalRoPE(c.dim // c.heads)
        self.registers = nn.Parameter(torch.randn(c.num_registers, c.dim) * 0.02) if c.num_registers else None
        self.transformer = TransformerStack(c.dim, c.depth, c.heads, c.kv_heads, c.mlp_ratio, c.dropout, c.qk_norm,
                                            c.attention_scale(c.dim // c.heads))  # fmt: skip
        self.norm = RMSNorm(c.dim)
        multi = {s: len(gs) for s, gs in self.tokenizer.groups.items() if len(gs) > 1}
        self.merges = nn.ModuleDict({s: BandsetMerge(c.dim, n) for s, n in multi.items()}) if c.merge_bandsets else None
        #: The EMA target encoder keeps the merge modules (aligned parameters) but turns merging off.
        self.merge_enabled = True
        self.upsampler = PatchUpsampler(c.dim, c.upsampler) if c.output_patch_size is not None else None

    def forward(self, images: dict[str, torch.Tensor], months: dict[str, torch.Tensor], patch_size: int,
                visible: torch.Tensor | None = None, gsd_m: float | None = None) -> tuple[torch.Tensor, torch.Tensor, Tokens]:  # fmt: skip
        """Returns (encoded (B, N, D) with zeros where nothing was kept, keep (B, N), input tokens).

        N follows the tokens' layout, merged when bandset merge is on, at
        `config.output_patch_size` in hybrid mode; `encode` returns that layout.
        """
        tok = self.tokenizer(images, months, patch_size, gsd_m)
        encoded, keep, layout = self.encode(tok, visible)
        out_ps = self.config.output_patch_size
        if self.upsampler is not None and out_ps != patch_size:
            encoded, _ = self.upsampler(encoded, layout, out_ps)  # (B, N_fine, D)
            keep = upsample_mask(keep, layout, out_ps)  # (B, N_fine)
        return encoded, keep, tok

    def encode(self, tok: Tokens, visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, TokenLayout]:
        """Run the transformer over the present (and, if given, visible) tokens only.

        -> encoded (B, N', D), keep (B, N'), and the layout of N' (merged when merging).
        """
        encoded, keep, layout, _ = self.encode_with_registers(tok, visible)
        return encoded, keep, layout

    def encode_with_registers(
        self, tok: Tokens, visible: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, TokenLayout, torch.Tensor]:
        """`encode`, plus the register tokens' outputs (B, R, D): Pixio's class tokens."""
        keep = ~tok.absent if visible is None else visible & ~tok.absent  # (B, N)
        x, layout = tok.tokens, tok.layout
        merge_after = self.config.merge_after_layer if self.merges is not None and self.merge_enabled else None
        if merge_after == -1:
            x, keep, layout = merge_sequence(self.merges, x, keep, layout)  # (B, N', D)
        R = self.config.num_registers
        registers = self.registers.expand(x.shape[0], -1, -1) if self.registers is not None else x.new_zeros(x.shape[0], 0, x.shape[2])
        h, real, index, rope, mask = self._pack(x, keep, layout, registers)  # h (B, R+L, D)
        if merge_after is not None and merge_after >= 0:
            # Unpack -> merge -> repack: the blocks after `merge_after` run on the shorter merged sequence.
            h = self.transformer(h, rope, mask, stop=merge_after + 1)
            x = unpack(h[:, R:], real, index, layout.num_tokens)  # (B, N, D)
            x, keep, layout = merge_sequence(self.merges, x, keep, layout)  # (B, N', D)
            h, real, index, rope, mask = self._pack(x, keep, layout, h[:, :R])  # (B, R+L', D)
            h = self.transformer(h, rope, mask, start=merge_after + 1)
        else:
            h = self.transformer(h, rope, mask)
        h = self.norm(h)
        return unpack(h[:, R:], real, index, layout.num_tokens), keep, layout, h[:, :R]

    def _pack(self, x: torch.Tensor, keep: torch.Tensor, layout: TokenLayout, registers: torch.Tensor):
        """Kept tokens to the front, registers before them; their RoPE angles and key mask."""
        packed, real, index = pack(x, keep)  # (B, L, D), (B, L), (B, L)
        B, R = x.shape[0], registers.shape[1]
        positions = layout.positions(x.device)[index]  # (B, L, 3)
        positions = torch.cat((positions.new_zeros(B, R, 3), positions), dim=1)  # registers: no rotation
        rope = self.rope(positions).unsqueeze(1)  # (B, 1, R+L, head_dim/2) complex
        mask = key_mask(torch.cat((real.new_ones(B, R), real), dim=1))  # (B, 1, 1, R+L) or None
        return torch.cat((registers, packed), dim=1), real, index, rope, mask

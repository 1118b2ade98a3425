"""The predictor (decoder) of latent prediction (spec section 2.4; bandset-merge seed, "Decoder").

Visible positions carry the encoder's output, projected to the predictor's
width; positions to predict carry a learned mask token plus their (sensor,
group) embedding; RoPE gives every token its place. Only visible and
to-predict tokens enter the transformer. When the encoder merged bandsets,
BandsetUnmerge first expands each merged token back to its bandsets, and the
original per-bandset `visible` / `predict` masks decide what is context.
"""

from __future__ import annotations

import torch
from torch import nn

from spacenit.arch.bandset_merge import BandsetUnmerge, unmerge_sequence
from spacenit.arch.layout import TokenLayout
from spacenit.arch.model_config import ModelConfig
from spacenit.arch.norm import RMSNorm
from spacenit.arch.packing import key_mask, pack, unpack
from spacenit.arch.rope import SpatioTemporalRoPE
from spacenit.arch.transformer import TransformerStack


class Predictor(nn.Module):
    def __init__(self, config: ModelConfig, groups_per_sensor: dict[str, int]) -> None:
        super().__init__()
        c = config
        self.input_proj = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(c.decoder_dim))
        self.group_embed = nn.Parameter(torch.zeros(sum(groups_per_sensor.values()), c.decoder_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.group_embed, std=0.02)
        self.rope = SpatioTemporalRoPE(c.decoder_dim // c.decoder_heads)
        self.transformer = TransformerStack(c.decoder_dim, c.decoder_depth, c.decoder_heads, None, c.mlp_ratio, c.dropout,
                                            c.qk_norm, c.attention_scale(c.decoder_dim // c.decoder_heads))  # fmt: skip
        self.norm = RMSNorm(c.decoder_dim)
        self.output_proj = nn.Linear(c.decoder_dim, c.dim)
        multi = {s: n for s, n in groups_per_sensor.items() if n > 1}
        self.unmerges = nn.ModuleDict({s: BandsetUnmerge(c.dim, n) for s, n in multi.items()}) if c.merge_bandsets else None

    def forward(self, encoded: torch.Tensor, visible: torch.Tensor, predict: torch.Tensor, layout: TokenLayout,
                encoded_layout: TokenLayout) -> torch.Tensor:  # fmt: skip
        """encoded (B, N', De) on `encoded_layout`; visible / predict (B, N) on `layout`.

        -> predictions (B, N, De), meaningful where `predict`.
        """
        if encoded_layout.merged:
            if self.unmerges is None:
                raise ValueError("the encoder merged bandsets but this predictor was built without merge_bandsets")
            encoded = unmerge_sequence(self.unmerges, encoded, layout)  # (B, N, De)
        elif encoded_layout != layout:
            raise ValueError(f"encoded tokens follow {encoded_layout}, the masks {layout}")
        x = self.input_proj(encoded)  # (B, N, Dd)
        queries = self.mask_token + self.group_embed[layout.group_index(x.device)]  # (N, Dd)
        x = torch.where(visible.unsqueeze(-1), x, queries)
        packed, real, index = pack(x, visible | predict)  # (B, L, Dd)
        rope = self.rope(layout.positions(x.device)[index]).unsqueeze(1)  # (B, 1, L, hd/2) complex
        out = self.transformer(packed, rope, key_mask(real))
        return self.output_proj(unpack(self.norm(out), real, index, layout.num_tokens))  # (B, N, De)

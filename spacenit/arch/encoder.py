"""Multi-sensor tokenizer, encoder and predictor (spec sections 2.1-2.2).

Every (sensor, spectral group, timestep, patch) becomes one token. Tokens
whose pixels are all missing (sentinel) are *absent*: they are removed from
the sequence before the transformer, like masked tokens, so no compute is
spent on them. Sequences are then right-padded to the longest in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spacenit.arch.attention import TransformerStack
from spacenit.arch.embed import AxialRoPE, MonthEmbedding, PatchEmbed
from spacenit.sensors import SENTINEL, SensorSpec


@dataclass
class TokenLayout:
    """What each position of the flat token sequence is; the same for every sample of a batch."""

    positions: torch.Tensor  # (N, 3): row, column (reference-GSD pixels), timestep
    group_index: torch.Tensor  # (N,): index into the model's (sensor, group) list
    spatial_shape: tuple[int, int]  # (h, w) patches per side


@dataclass
class Tokens:
    tokens: torch.Tensor  # (B, N, D)
    absent: torch.Tensor  # (B, N) True where the token has no data
    months: torch.Tensor  # (B, N) month 1-12 of each token, 0 unknown
    layout: TokenLayout


def pack(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the kept tokens of each sample to the front.

    x (B, N, D), keep (B, N) -> packed (B, L, D), pad_mask (B, L), index (B, L),
    with L the largest number of kept tokens in the batch.
    """
    B, N, D = x.shape
    lengths = keep.sum(dim=1)
    L = max(int(lengths.max()), 1)
    # Stable sort puts kept tokens first, in their original order.
    index = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :L]
    packed = x.gather(1, index.unsqueeze(-1).expand(B, L, D))
    pad_mask = torch.arange(L, device=x.device)[None, :] < lengths[:, None]
    return packed, pad_mask, index


def unpack(packed: torch.Tensor, pad_mask: torch.Tensor, index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of `pack`: (B, L, D) -> (B, N, D), zeros where nothing was kept."""
    B, L, D = packed.shape
    out = packed.new_zeros(B, num_tokens, D)
    kept = torch.where(pad_mask.unsqueeze(-1), packed, torch.zeros_like(packed))
    return out.scatter(1, index.unsqueeze(-1).expand(B, L, D), kept)


class MultiSensorTokenizer(nn.Module):
    """Sensor images -> flat token sequence with group and month embeddings."""

    def __init__(self, sensors: list[SensorSpec], dim: int, base_patch_size: int, reference_gsd_m: float = 10.0) -> None:
        super().__init__()
        self.sensors = {s.name: s for s in sensors}
        self.reference_gsd_m = reference_gsd_m
        self.group_keys: list[tuple[str, str]] = [(s.name, g.name) for s in sensors for g in s.groups]
        self.patch_embed = nn.ModuleDict(
            {f"{s.name}__{g.name}": PatchEmbed(len(g.bands), dim, base_patch_size) for s in sensors for g in s.groups}
        )
        self.group_embed = nn.Parameter(torch.zeros(len(self.group_keys), dim))
        nn.init.trunc_normal_(self.group_embed, std=0.02)
        self.month_embed = MonthEmbedding(dim)
        # Band positions of each group inside its sensor's stored band order.
        for s in sensors:
            for g in s.groups:
                self.register_buffer(f"bands__{s.name}__{g.name}", torch.tensor(s.band_index(g.bands)), persistent=False)

    def forward(self, images: dict[str, torch.Tensor], months: dict[str, torch.Tensor], patch_size: int) -> Tokens:
        tokens, absent, token_months, positions, groups = [], [], [], [], []
        for gi, (sensor, group) in enumerate(self.group_keys):
            x = images[sensor]  # (B, T, C, H, W)
            B, T, _, H, W = x.shape
            if H % patch_size or W % patch_size:
                raise ValueError(f"{sensor}: tile {H}x{W} px does not divide by patch size {patch_size}")
            x = x.index_select(2, getattr(self, f"bands__{sensor}__{group}"))  # (B, T, Cg, H, W)
            missing = x == SENTINEL
            x = x.masked_fill(missing, 0.0)
            emb = self.patch_embed[f"{sensor}__{group}"](x.flatten(0, 1), patch_size)  # (B*T, D, h, w)
            h, w = emb.shape[-2:]
            emb = emb.flatten(2).transpose(1, 2).reshape(B, T * h * w, -1)  # (B, T*h*w, D)
            # A token is absent when every pixel of every band of its group is missing.
            patch_missing = F.avg_pool2d(missing.all(dim=2).flatten(0, 1).float(), patch_size)  # (B*T, h, w)
            absent.append((patch_missing >= 1.0).reshape(B, T * h * w))
            tokens.append(emb + self.group_embed[gi])
            token_months.append(months[sensor][:, :, None].expand(B, T, h * w).reshape(B, T * h * w))
            positions.append(self._positions(T, h, w, patch_size, self.sensors[sensor].groups, group, x.device))
            groups.append(torch.full((T * h * w,), gi, device=x.device))
        month = torch.cat(token_months, dim=1)
        layout = TokenLayout(torch.cat(positions), torch.cat(groups), (h, w))
        tokens_all = torch.cat(tokens, dim=1) + self.month_embed(month)
        return Tokens(tokens_all, torch.cat(absent, dim=1), month, layout)

    def _positions(self, T: int, h: int, w: int, patch_size: int, groups, group: str, device) -> torch.Tensor:
        # Positions in reference-GSD pixels at the patch centre. All groups are stored on the
        # dataset's reference grid, so a patch spans patch_size reference pixels.
        t, r, c = torch.meshgrid(
            torch.arange(T, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        scale = float(patch_size)
        return torch.stack(((r.flatten() + 0.5) * scale, (c.flatten() + 0.5) * scale, t.flatten().float()), dim=-1)


class Encoder(nn.Module):
    """Tokens of the visible positions -> encoded tokens."""

    def __init__(self, sensors: list[SensorSpec], dim: int, depth: int, heads: int, kv_heads: int | None,
                 mlp_ratio: float, base_patch_size: int, dropout: float = 0.0, qk_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.tokenizer = MultiSensorTokenizer(sensors, dim, base_patch_size)
        self.rope = AxialRoPE(dim // heads)
        self.transformer = TransformerStack(dim, depth, heads, kv_heads, mlp_ratio, dropout, qk_norm)

    def forward(self, images, months, patch_size: int, visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Tokens]:
        """Returns (encoded (B, N, D) with zeros at dropped positions, keep (B, N), tokens)."""
        tok = self.tokenizer(images, months, patch_size)
        encoded, keep = self.encode(tok, visible)
        return encoded, keep, tok

    def encode(self, tok: Tokens, visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer over the present (and, if given, visible) tokens only."""
        keep = ~tok.absent if visible is None else (visible & ~tok.absent)
        packed, pad_mask, index = pack(tok.tokens, keep)
        rope = self.rope(tok.layout.positions[index])  # (B, L, 3) -> cos/sin
        encoded = self.transformer(packed, rope, pad_mask)
        return unpack(encoded, pad_mask, index, tok.tokens.shape[1]), keep


class Predictor(nn.Module):
    """Predict latents at masked positions from the visible encoded tokens."""

    def __init__(self, num_groups: int, enc_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.input_proj = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.group_embed = nn.Parameter(torch.zeros(num_groups, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.group_embed, std=0.02)
        self.rope = AxialRoPE(dim // heads)
        self.transformer = TransformerStack(dim, depth, heads, None, mlp_ratio)
        self.output_proj = nn.Linear(dim, enc_dim)

    def forward(self, encoded: torch.Tensor, visible: torch.Tensor, predict: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """encoded (B, N, De), visible/predict (B, N) -> predictions (B, N, De), meaningful where `predict`."""
        x = self.input_proj(encoded)
        queries = (self.mask_token + self.group_embed[layout.group_index]).expand_as(x)
        x = torch.where(visible.unsqueeze(-1), x, queries)
        packed, pad_mask, index = pack(x, visible | predict)
        out = self.transformer(packed, self.rope(layout.positions[index]), pad_mask)
        return self.output_proj(unpack(out, pad_mask, index, x.shape[1]))


def mean_pool(encoded: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept tokens: (B, N, D), (B, N) -> (B, D)."""
    weights = keep.unsqueeze(-1).to(encoded.dtype)
    return (encoded * weights).sum(1) / weights.sum(1).clamp_min(1.0)

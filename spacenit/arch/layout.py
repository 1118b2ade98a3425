"""Where each token of the flat sequence comes from (spec section 2.2, "Sequence assembly").

The sequence is the concatenation, sensor after sensor, of one block per
sensor ordered (token group, timestep, patch row, patch column); a
non-spatial sensor (ERA5: one value per band and timestep) has one token per
(token group, timestep), placed at the centre of the tile. Every sample
of a batch shares the layout; which tokens a sample really has is a separate
(B, N) mask. A layout can be *merged* (one token per sensor, timestep and
patch after BandsetMerge) or rebuilt at another patch size (PatchUpsampler).

Positions feed RoPE: (row, column) of the patch centre in reference-GSD
pixels, and the timestep index.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class SensorBlock:
    sensor: str
    #: Token groups in sequence order; one joined name ("10m+20m+60m") once merged.
    groups: tuple[str, ...]
    #: Index of groups[0] among the tokenizer's (sensor, group) pairs; groups follow consecutively.
    first_group: int
    num_timesteps: int
    #: False for a sensor without a pixel grid: one token per group and timestep.
    spatial: bool = True


@dataclass(frozen=True)
class TokenLayout:
    blocks: tuple[SensorBlock, ...]
    #: Patches per column and per row: (h, w).
    grid: tuple[int, int]
    patch_size: int
    #: Pixel size of the input grid over the reference GSD (gsd_m / reference_gsd_m).
    gsd_scale: float
    merged: bool = False

    def tokens_per_map(self, block: SensorBlock) -> int:
        """Tokens of one (group, timestep): the patch grid, or 1 for a non-spatial sensor."""
        return self.grid[0] * self.grid[1] if block.spatial else 1

    def block_length(self, block: SensorBlock) -> int:
        return len(block.groups) * block.num_timesteps * self.tokens_per_map(block)

    def spans(self) -> list[tuple[SensorBlock, int, int]]:
        """(block, start, stop) of every block in the flat sequence."""
        out, start = [], 0
        for block in self.blocks:
            out.append((block, start, start + self.block_length(block)))
            start += self.block_length(block)
        return out

    @property
    def num_tokens(self) -> int:
        return sum(self.block_length(b) for b in self.blocks)

    def positions(self, device: torch.device) -> torch.Tensor:
        """(N, 3): row and column of each patch centre in reference-GSD pixels, timestep index."""
        scale = self.patch_size * self.gsd_scale
        out = []
        for block in self.blocks:
            h, w = self.grid if block.spatial else (1, 1)
            g, t, r, c = torch.meshgrid(*(torch.arange(n, device=device) for n in (len(block.groups), block.num_timesteps, h, w)),
                                        indexing="ij")  # fmt: skip
            if block.spatial:
                row, col = (r + 0.5) * scale, (c + 0.5) * scale
            else:  # the tile centre
                row = torch.full(t.shape, self.grid[0] / 2 * scale, device=device)
                col = torch.full(t.shape, self.grid[1] / 2 * scale, device=device)
            out.append(torch.stack((row.float(), col.float(), t.float()), dim=-1).flatten(0, 3))  # (G*T*h*w, 3)
        return torch.cat(out)  # (N, 3)

    def group_index(self, device: torch.device) -> torch.Tensor:
        """(N,): each token's index among the tokenizer's (sensor, group) pairs (the first group's once merged)."""
        out = []
        for block in self.blocks:
            groups = torch.arange(len(block.groups), device=device) + block.first_group
            out.append(groups.repeat_interleave(block.num_timesteps * self.tokens_per_map(block)))
        return torch.cat(out)

    def merge(self) -> TokenLayout:
        """The layout after BandsetMerge: one token per sensor, timestep and patch."""
        blocks = tuple(replace(b, groups=("+".join(b.groups),)) for b in self.blocks)
        return replace(self, blocks=blocks, merged=True)

    def at_patch_size(self, patch_size: int) -> TokenLayout:
        """The same blocks over the same pixels, tokenized at another patch size."""
        h, w = self.grid
        if (h * self.patch_size) % patch_size or (w * self.patch_size) % patch_size:
            raise ValueError(f"a {h * self.patch_size}x{w * self.patch_size} px grid does not divide by patch size {patch_size}")
        grid = (h * self.patch_size // patch_size, w * self.patch_size // patch_size)
        return replace(self, grid=grid, patch_size=patch_size)

"""Adaptive (FlexiViT) patch embedding for one spectral group (spec section 2.2, "Patch embedding").

Patchify with a reshape (the `nn.Unfold` of the spec: patches never overlap)
and project with one linear map. The kernel is stored at `base_patch_size`;
any other patch size at run time uses the kernel resized by FlexiViT's
pseudo-inverse resize (Beyer et al. 2023, "FlexiViT", section 3.4): with B the
bilinear resize of a base-size patch to the new size, the new kernel is
w' = pinv(B^T) w, so that <B x, w'> = <x, w>: a patch resized to the new patch
size gives the same token (exactly when enlarging, in the least-squares sense
when shrinking).

Native resolution (spec core idea 1): the kernel is defined over the ground
patch, p0 x p0 cells of it per band. A token group whose bands lie on grids of
different pixel sizes is embedded from each grid's own pixels: the kernel slice
of a grid's bands is resized to that grid's pixels per patch, and the grids'
projections are summed (a linear map of the concatenated pixels). So a 20 m
band contributes 4 x 4 native pixels to an 80 m patch where a 10 m band gives
8 x 8, and the same bands upsampled to 10 m give (least squares) the same token.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def pi_resize_matrix(base: int, new: int) -> torch.Tensor:
    """pinv(B) (base^2, new^2), with B (new^2, base^2) the antialiased bilinear resize of a base x base patch."""
    basis = torch.eye(base * base, dtype=torch.float64).view(base * base, 1, base, base)
    resized = F.interpolate(basis, size=(new, new), mode="bilinear", antialias=True, align_corners=False)
    resize = resized.reshape(base * base, new * new).T  # (new^2, base^2): resize(x) = B @ x
    return torch.linalg.pinv(resize).float()  # (base^2, new^2)


class AdaptivePatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, H/p * W/p, D) for any patch size p at run time."""

    def __init__(self, in_channels: int, dim: int, base_patch_size: int) -> None:
        super().__init__()
        self.in_channels, self.base_patch_size = in_channels, base_patch_size
        self.weight = nn.Parameter(torch.empty(dim, in_channels, base_patch_size, base_patch_size))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.weight, std=(in_channels * base_patch_size**2) ** -0.5)

    def kernel(self, patch_size: int) -> torch.Tensor:
        """The kernel at `patch_size`, flattened to (D, C * p * p) in (channel, row, column) order."""
        p0 = self.base_patch_size
        w = self.weight.flatten(2)  # (D, C, p0*p0)
        if patch_size != p0:
            w = w @ pi_resize_matrix(p0, patch_size).to(w)  # (D, C, p*p)
        return w.flatten(1)  # (D, C*p*p)

    def forward(self, x: torch.Tensor, patch_size: int) -> torch.Tensor:
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"patch embedding expects {self.in_channels} channels, got {C}")
        if H % patch_size or W % patch_size:
            raise ValueError(f"image {H}x{W} px does not divide by patch size {patch_size}")
        return F.linear(patchify(x, patch_size), self.kernel(patch_size), self.bias)  # (N, h*w, D)

    def forward_grids(self, parts: list[tuple[torch.Tensor, torch.Tensor, int]]) -> torch.Tensor:
        """Embed a token group from several grids: parts [(x (N, C_g, h*k, w*k), channels (C_g,), k)],
        `channels` the positions of the grid's bands in the group, k its pixels per patch; every
        part on the same h x w patch grid. -> (N, h*w, D)."""
        out = None
        for x, channels, k in parts:
            kernel = self.weight.index_select(1, channels).flatten(2)  # (D, C_g, p0*p0)
            if k != self.base_patch_size:
                kernel = kernel @ pi_resize_matrix(self.base_patch_size, k).to(kernel)  # (D, C_g, k*k)
            projected = F.linear(patchify(x, k), kernel.flatten(1))  # (N, h*w, D)
            out = projected if out is None else out + projected
        return out + self.bias


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, h*p, w*p) -> (N, h*w, C*p*p), patches in row-major order, each (channel, row, column)."""
    N, C, H, W = x.shape
    h, w = H // p, W // p
    return x.reshape(N, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(N, h * w, C * p * p)

"""Adaptive (FlexiViT) patch embedding for one spectral group (spec section 2.2, "Patch embedding").

Patchify with a reshape (the `nn.Unfold` of the spec: patches never overlap)
and project with one linear map. The kernel is stored at `base_patch_size`;
any other patch size at run time uses the kernel resized by FlexiViT's
pseudo-inverse resize (Beyer et al. 2023, "FlexiViT", section 3.4): with B the
bilinear resize of a base-size patch to the new size, the new kernel is
w' = pinv(B^T) w, so that <B x, w'> = <x, w>: a patch resized to the new patch
size gives the same token (exactly when enlarging, in the least-squares sense
when shrinking).
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
        h, w, p = H // patch_size, W // patch_size, patch_size
        patches = x.view(N, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(N, h * w, C * p * p)  # (N, h*w, C*p*p)
        return F.linear(patches, self.kernel(p), self.bias)  # (N, h*w, D)

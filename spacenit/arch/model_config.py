"""The model's one parameter list (spec section 5 for sizes; seeds for merge and hybrid patch size)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spacenit.arch.tokenization import TokenizationConfig
from spacenit.arch.upsampler import UPSAMPLERS
from spacenit.config import Config


@dataclass
class ModelConfig(Config):
    """Sizes and options of the encoder and predictor. Defaults are the nano preset."""

    dim: int = 128
    depth: int = 4
    heads: int = 8
    #: Key/value heads of grouped-query attention in the encoder; None = one per query head.
    kv_heads: int | None = None
    #: FFN budget as a multiple of dim (SwiGLU hidden = 2/3 of it).
    mlp_ratio: float = 4.0
    decoder_dim: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 8
    #: Patch size (pixels) the patch-embedding kernels are stored at; others are resized from it.
    base_patch_size: int = 8
    #: Dropout on attention weights and FFN outputs.
    dropout: float = 0.0
    #: RMSNorm on each head's queries and keys.
    qk_norm: bool = False
    #: Learned register tokens prepended to every encoder sequence (no RoPE; dropped at the output).
    num_registers: int = 0
    #: Spatial RoPE positions are in pixels of this ground-sample distance (metres).
    reference_gsd_m: float = 10.0
    #: Band groups per sensor and band dropout.
    tokenization: TokenizationConfig = field(default_factory=TokenizationConfig)
    #: Merge each multi-bandset sensor's bandset tokens into one (BandsetMerge); the predictor unmerges.
    merge_bandsets: bool = False
    #: -1: merge before the transformer; k: merge after block k (0-based). Used with merge_bandsets.
    merge_after_layer: int = -1
    #: Hybrid patch size: encoder outputs are upsampled to this patch size (pixels); None = off.
    output_patch_size: int | None = None
    #: How outputs are upsampled in hybrid mode: "bilinear" or "learned".
    upsampler: str = "bilinear"
    #: muP (spacenit.train.mup): width-aware init, per-layer learning rates and 1/head_dim attention,
    #: relative to the model at encoder width `mup_base_dim` (other widths scaled alike, heads kept).
    mup: bool = False
    mup_base_dim: int = 128

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"dim {self.dim} must divide by heads {self.heads}, "
                             f"decoder_dim {self.decoder_dim} by decoder_heads {self.decoder_heads}")  # fmt: skip
        if not -1 <= self.merge_after_layer < self.depth:
            raise ValueError(f"merge_after_layer must be -1 (before the transformer) or a block index below depth "
                             f"{self.depth}, got {self.merge_after_layer}")  # fmt: skip
        if self.output_patch_size is not None and self.output_patch_size < 1:
            raise ValueError(f"output_patch_size must be a positive number of pixels, got {self.output_patch_size}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if self.mup_base_dim < 1:
            raise ValueError(f"mup_base_dim must be a positive width, got {self.mup_base_dim}")

    def attention_scale(self, head_dim: int) -> float | None:
        """Softmax scale of attention logits: None (SDPA's 1/sqrt(head_dim)) without muP; with it,
        1/head_dim (Tensor Programs V, section 4) equal to SP at the base width: 1/sqrt(head_dim * m)."""
        return (head_dim * self.dim / self.mup_base_dim) ** -0.5 if self.mup else None

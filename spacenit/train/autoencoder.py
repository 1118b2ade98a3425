"""Pixel reconstruction (spec section 2.4, "AutoEncoder"; Pixio notes in ssl-eval-notes.md).

The encoder sees the visible tokens; a pixel decoder (its own transformer,
`model.decoder_depth` blocks, so "a deeper decoder" is one config value)
takes the encoder outputs at visible positions and a mask token at positions
to predict, and `PixelHead` turns its outputs into the pixels of every
(sensor, band group) patch at the batch's patch size. The loss (MSE, L1 or
smooth L1) counts predicted patches only and real pixels only, against
targets standardized per patch (MAE's norm_pix_loss) by default.

Pixio's class tokens: with `objective.num_cls_tokens` K > 0, the first K of
the encoder's register tokens (`model.num_registers` >= K) are the class
tokens: the encoder processes them with the visible patches, and their
outputs enter the decoder beside the patches (without a position), so
reconstruction gradients shape a global summary inside the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from spacenit.arch.heads import PixelHead, patch_targets
from spacenit.arch.models import SpaceNitModel
from spacenit.arch.norm import RMSNorm
from spacenit.arch.packing import key_mask, pack, unpack
from spacenit.arch.rope import SpatioTemporalRoPE
from spacenit.arch.transformer import TransformerStack
from spacenit.config import ConfigError
from spacenit.data.masking import MaskingStrategy
from spacenit.sensors import SENTINEL
from spacenit.train import losses
from spacenit.train.module import ObjectiveConfig, TrainModule


class PixelDecoder(nn.Module):
    """Encoder outputs at visible positions + mask tokens elsewhere (+ class tokens) -> decoder features."""

    def __init__(self, model: SpaceNitModel, num_cls_tokens: int = 0) -> None:
        super().__init__()
        c = model.config
        num_groups = sum(len(gs) for gs in model.encoder.tokenizer.groups.values())
        self.input_proj = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(c.decoder_dim) * 0.02)
        self.group_embed = nn.Parameter(torch.randn(num_groups, c.decoder_dim) * 0.02)
        self.num_cls_tokens = num_cls_tokens
        self.rope = SpatioTemporalRoPE(c.decoder_dim // c.decoder_heads)
        self.transformer = TransformerStack(c.decoder_dim, c.decoder_depth, c.decoder_heads, None, c.mlp_ratio, c.dropout,
                                            c.qk_norm, c.attention_scale(c.decoder_dim // c.decoder_heads))  # fmt: skip
        self.norm = RMSNorm(c.decoder_dim)

    def forward(self, encoded: torch.Tensor, visible: torch.Tensor, predict: torch.Tensor, layout,
                registers: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """encoded (B, N, De); visible / predict (B, N); the encoder's registers (B, R, De)
        -> features (B, N, Dd), meaningful where `predict`."""
        x = self.input_proj(encoded)  # (B, N, Dd)
        queries = self.mask_token + self.group_embed[layout.group_index(x.device)]  # (N, Dd)
        x = torch.where(visible.unsqueeze(-1), x, queries)
        packed, real, index = pack(x, visible | predict)  # (B, L, Dd)
        positions = layout.positions(x.device)[index]  # (B, L, 3)
        if self.num_cls_tokens:
            K = self.num_cls_tokens
            cls = self.input_proj(registers[:, :K])  # (B, K, Dd)
            packed = torch.cat((cls, packed), dim=1)  # (B, K+L, Dd)
            positions = torch.cat((positions.new_zeros(x.shape[0], K, 3), positions), dim=1)  # no rotation
            real_all = torch.cat((real.new_ones(x.shape[0], K), real), dim=1)
        else:
            K, real_all = 0, real
        rope = self.rope(positions).unsqueeze(1)  # (B, 1, K+L, head_dim/2)
        out = self.transformer(packed, rope, key_mask(real_all))
        return unpack(self.norm(out[:, K:]), real, index, layout.num_tokens)  # (B, N, Dd)


class PixelBranch(nn.Module):
    """Pixel decoder + PixelHead + reconstruction loss; shared by AutoEncoder and DualBranch."""

    def __init__(self, model: SpaceNitModel, config: ObjectiveConfig) -> None:
        super().__init__()
        if model.config.merge_bandsets:
            raise ConfigError("pixel reconstruction needs one token per bandset: set model.merge_bandsets=false")
        if config.reconstruction_loss not in ("mse", "l1", "smooth_l1"):
            raise ConfigError(f"objective.reconstruction_loss must be mse, l1 or smooth_l1, got {config.reconstruction_loss!r}")
        if config.num_cls_tokens > model.config.num_registers:
            raise ConfigError(f"objective.num_cls_tokens={config.num_cls_tokens} reads the encoder's register tokens: "
                              f"set model.num_registers to at least {config.num_cls_tokens}")  # fmt: skip
        self.config = config
        self.decoder = PixelDecoder(model, config.num_cls_tokens)
        channels = {(s, g.name): len(g.bands) for s, gs in model.encoder.tokenizer.groups.items() for g in gs}
        nonspatial = frozenset(s.name for s in model.sensors if not s.spatial)
        self.head = PixelHead(model.config.decoder_dim, channels, model.config.base_patch_size, nonspatial)

    def forward(self, tok, encoded, visible, predict, registers: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction loss of the predicted patches (mean over patches of all groups)."""
        features = self.decoder(encoded, visible, predict, tok.layout, registers)  # (B, N, Dd)
        with torch.autocast(features.device.type, enabled=False):  # pixels in float32 (bf16 resize has no CPU kernel)
            predicted = self.head(features.float(), tok.layout, tok.pixels)  # {(sensor, group): (B, L, P)}
        targets = patch_targets(tok.pixels)
        c = self.config
        total, patches = features.float().sum() * 0.0, predict.new_zeros((), dtype=torch.long)
        for block, start, stop in tok.layout.spans():
            per_group = predict[:, start:stop].unflatten(1, (len(block.groups), -1))  # (B, G, T*h*w)
            for gi, group in enumerate(block.groups):
                sel = per_group[:, gi]  # (B, T*h*w)
                target = targets[(block.sensor, group)][sel]  # (M, P)
                pred = predicted[(block.sensor, group)][sel]  # (M, P)
                term = losses.reconstruction(pred, target, target != SENTINEL, kind=c.reconstruction_loss,
                                             normalize_target=c.normalize_target_patches)  # fmt: skip
                # Groups differ in patch length: weigh each group's mean by its number of patches.
                total = total + term * sel.sum()
                patches = patches + sel.sum()
        return total / patches.clamp(min=1)


class AutoEncoder(TrainModule):
    def __init__(self, model: SpaceNitModel, config: ObjectiveConfig | None = None, masking: MaskingStrategy | None = None,
                 *, total_steps: int = 1000) -> None:  # fmt: skip
        config = config or ObjectiveConfig(name="autoencoder")
        super().__init__(model, config, masking, total_steps)
        self.pixel = PixelBranch(model, config)
        # The latent predictor is not trained here; frozen, it stays out of DDP's gradient sync.
        model.predictor.requires_grad_(False)

    def forward(self, batch: dict, patch_size: int, generator: torch.Generator, step: int = 0) -> dict[str, torch.Tensor]:
        tok = self.model.encoder.tokenizer(batch["images"], batch["months"], patch_size, batch.get("gsd_m"))
        visible, predict = self.mask(tok, generator, step)
        encoded, _, _, registers = self.model.encoder.encode_with_registers(tok, visible)
        recon = self.pixel(tok, encoded, visible, predict, registers)
        return {
            "loss": self.config.reconstruction_weight * recon,
            "reconstruction_loss": recon,
            "visible_tokens": visible.sum() / visible.shape[0],
            "predicted_tokens": predict.sum() / predict.shape[0],
            "tokens": (~tok.absent).sum().float(),
        }

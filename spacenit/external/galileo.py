"""Galileo nano: the encoder of Tseng, Fuller, Reil, Herzog, Beukema, Bastani, Green, Shelhamer, Kerner and
Rolnick, "Galileo: Learning Global & Local Features of Many Remote Sensing Modalities" (ICML 2025,
arXiv:2502.09356), written for SpaceNit. It follows the authors' repository nasaharvest/galileo at commit
0f0b5b95ac81acef4b74cf4686dc877202f4541b, the commit the published weights come from: the encoder of
`single_file_galileo.py` / `src/galileo.py`, the normalizer of `src/data/dataset.py` with the statistics of
`config/normalization.json`, and the evaluation wrapper `GalileoWrapper` used by `eval.py`.

Architecture (what the state dict `encoder.pt` holds):
- Channel groups of four kinds. Space-time: S1 (VV, VH), S2 RGB (B2-B4), S2 red edge (B5-B7), S2 NIR 10 m
  (B8), S2 NIR 20 m (B8A), S2 SWIR (B11, B12), NDVI. Space: SRTM (elevation, slope), Dynamic World (9),
  WorldCereal (5). Time: ERA5 (temperature, precipitation), TerraClimate (3), VIIRS (1). Static: LandScan,
  location (x, y, z), Dynamic World and WorldCereal aggregates.
- One token per group and patch (space, space-time; a Conv2d with 8 px kernels, resampled to the patch size
  by FlexiViT's pseudo-inverse of the bicubic antialiased resize), per group and timestep (time; Linear),
  or per group (static; Linear).
- Each token gets four quarters of encoding added: a learned channel-group embedding, a 1-D sin/cos of the
  timestep index, a sin/cos month table, and a 2-D sin/cos of the patch's row and column scaled by the patch's
  ground size over 10 m. Quarters that do not apply to a kind are zero.
- Masked (missing) tokens are dropped; 4 pre-norm transformer blocks (q, k, v separate); a final LayerNorm.
- Pooled embedding: mean of the present output tokens. Per patch: mean of the present tokens of that patch
  plus the (broadcast) time and static tokens, as `apply_mask_and_average_tokens_per_patch`.

SpaceNit inputs -> Galileo (`galileo_inputs`):
- S2 bands from `sentinel2_l1c`, else `sentinel2_l2a` (B02 -> B2, ...); B01, B09, B10 are not model inputs.
  S1 from `sentinel1` (dB). NDVI only from an `ndvi` sensor: the authors' wrapper leaves the NDVI group
  masked for S2 inputs rather than computing it. SRTM from `srtm` elevation, the slope derived from it on
  the input grid (`slope_degrees`). ERA5 from `era5` 2m_temperature (K) and total_precipitation (m).
- Normalization: the pretraining normalizer (`normalization: std` in the weights' config.json):
  (x - (mean - 2 std)) / (4 std) with the pretraining statistics for S1, S2, SRTM and ERA5 bands, NDVI as is.
  For S2 and S1 this is also the evaluation default of `eval.py` ("OURS" stats, norm_no_clip, x2 std).
- Missing inputs are masked as the authors mask them: a group whose bands the data lacks is masked whole
  (`construct_galileo_input`), and a token is masked when any value of its group in its patch is missing.
  TerraClimate, VIIRS, Dynamic World, WorldCereal, LandScan and location are always masked (SpaceNit's
  worldcereal products are not Galileo's five maps; the evaluation wrapper masks location too).
- Months 1-12 become indices 0-11; unknown months use index 6, the evaluation wrapper's default.
- Patch size 4 px by default (`eval.py`); the token's ground size is patch size x `gsd_m`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spacenit.external.interface import (
    ExternalEmbeddings,
    ExternalInputError,
    RawInputs,
    prepare_inputs,
    slope_degrees,
    stack_bands,
    timeline,
)
from spacenit.external.layers import Block, month_table, pack_present, unpack
from spacenit.external.weights import WeightsFile, load_state_dict, load_strict, locate

ENCODER_FILE = WeightsFile("galileo_nano", "encoder.pt", "eab6acacf527886a508a555bc24efe4b4a2cf91b162e84cd1c4a1807e942180c",
                           "nasaharvest/galileo data/models/nano/encoder.pt")  # fmt: skip
CONFIG_FILE = WeightsFile("galileo_nano", "config.json", "8ec17cb83cb78d987b4b920b9c1c35aa245ec0f80e1abf0c22d6f77d828f431c",
                          "nasaharvest/galileo data/models/nano/config.json")  # fmt: skip

#: Channel groups in the authors' order (the order of the channel embeddings), with their bands.
SPACE_TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "S1": ("VV", "VH"), "S2_RGB": ("B2", "B3", "B4"), "S2_Red_Edge": ("B5", "B6", "B7"), "S2_NIR_10m": ("B8",),
    "S2_NIR_20m": ("B8A",), "S2_SWIR": ("B11", "B12"), "NDVI": ("NDVI",),
}  # fmt: skip
_DW = ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare", "snow_and_ice")
_WC = ("temporarycrops", "maize", "wintercereals", "springcereals", "irrigation")
SPACE_GROUPS: dict[str, tuple[str, ...]] = {"SRTM": ("elevation", "slope"), "DW": _DW, "WC": _WC}
TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "ERA5": ("temperature_2m", "total_precipitation_sum"), "TC": ("def", "soil", "aet"), "VIIRS": ("avg_rad",),
}  # fmt: skip
STATIC_GROUPS: dict[str, tuple[str, ...]] = {"LS": ("b1",), "location": ("x", "y", "z"), "DW_static": _DW, "WC_static": _WC}

#: (mean, std) of the pretraining data (config/normalization.json, keys "13", "16" and "6").
BAND_STATS: dict[str, tuple[float, float]] = {
    "VV": (-11.728724389184965, 4.887145774840316), "VH": (-18.85558188024017, 5.730270320384293),
    "B2": (1395.3408730676722, 917.7041440370853), "B3": (1338.4026921784578, 913.2988423581528),
    "B4": (1343.09883810357, 1092.678723527555), "B5": (1543.8607982512297, 1047.2206083460424),
    "B6": (2186.2022069512263, 1048.0101611156767), "B7": (2525.0932853316694, 1143.6903026819996),
    "B8": (2410.3377187373408, 1098.979177731649), "B8A": (2750.2854646886753, 1204.472755085893),
    "B11": (2234.911100061487, 1145.9774063078878), "B12": (1474.5311266077113, 980.2429840007796),
    "elevation": (673.0152819503361, 983.0697298296237), "slope": (5.930092668915115, 8.167406789813247),
    "temperature_2m": (271.5674963541667, 79.80828940314429),
    "total_precipitation_sum": (0.08554303677156568, 0.11669547098151486),
}  # fmt: skip
STD_MULTIPLIER = 2.0

_S2 = (("sentinel2_l1c", "B{:02d}"), ("sentinel2_l2a", "B{:02d}"))
#: Galileo band -> SpaceNit (sensor, band) candidates, first present wins.
SPACENIT_BANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "VV": (("sentinel1", "VV"),), "VH": (("sentinel1", "VH"),),
    **{b: tuple((s, f.format(int(b[1:]))) for s, f in _S2) for b in ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")},
    "B8A": (("sentinel2_l1c", "B8A"), ("sentinel2_l2a", "B8A")),
    "NDVI": (("ndvi", "ndvi"),),
    "elevation": (("srtm", "elevation"),),
    "temperature_2m": (("era5", "2m_temperature"),),
    "total_precipitation_sum": (("era5", "total_precipitation"),),
}  # fmt: skip
SENSORS = ("sentinel2_l1c", "sentinel2_l2a", "sentinel1", "ndvi", "srtm", "era5")
TEMPORAL_SENSORS = ("sentinel2_l1c", "sentinel2_l2a", "sentinel1", "ndvi", "era5")
#: Month index (0 = January) for timesteps of unknown date: GalileoWrapper's default.
UNKNOWN_MONTH_INDEX = 6
DEFAULT_PATCH_SIZE = 4
BASE_GSD_M = 10.0


@dataclass(frozen=True)
class GalileoConfig:
    """The encoder's shape, as `model.encoder` of the weights' config.json gives it."""

    embedding_size: int = 128
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    max_sequence_length: int = 24
    max_patch_size: int = 8

    @classmethod
    def from_json(cls, path: Path) -> GalileoConfig:
        encoder = json.loads(path.read_text())["model"]["encoder"]
        return cls(*(encoder[k] for k in ("embedding_size", "depth", "num_heads", "mlp_ratio", "max_sequence_length", "max_patch_size")))


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(M,) positions -> (M, dim): sin then cos of position x 10000^(-k / (2 dim)), k < dim/2 (the authors' frequencies)."""
    frequency = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / dim / 2.0)
    angle = positions.float()[:, None] * frequency[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def spatial_table(rows: int, cols: int, dim: int, scale: float) -> torch.Tensor:
    """(rows, cols, dim): the column's encoding in the first half, the row's in the second, positions x `scale`."""
    col = sincos_1d(torch.arange(cols) * scale, dim // 2)  # (cols, dim/2)
    row = sincos_1d(torch.arange(rows) * scale, dim // 2)  # (rows, dim/2)
    return torch.cat([col[None].expand(rows, -1, -1), row[:, None].expand(-1, cols, -1)], dim=-1)


@cache
def resize_pinv(old: int, new: int) -> torch.Tensor:
    """(new*new, old*old): pseudo-inverse of the bicubic antialiased resize of an old x old kernel to new x new."""
    basis = torch.eye(old * old).view(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bicubic", antialias=True)  # row i: basis kernel i resized
    return torch.linalg.pinv(resized.reshape(old * old, new * new))


class PatchEmbed(nn.Module):
    """A group's bands -> one token per patch; kernels stored at `max_patch` px, resampled for other patch sizes."""

    def __init__(self, channels: int, dim: int, max_patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=max_patch, stride=max_patch)

    def forward(self, x: torch.Tensor, patch: int) -> torch.Tensor:
        """x (N, C, H, W) -> (N, h, w, D)."""
        weight = self.proj.weight  # (D, C, P, P)
        if patch != weight.shape[-1]:
            D, C, P, _ = weight.shape
            weight = (weight.reshape(D, C, P * P) @ resize_pinv(P, patch).T.to(weight)).reshape(D, C, patch, patch)
        return F.conv2d(x, weight, self.proj.bias, stride=patch).permute(0, 2, 3, 1)


@dataclass
class GalileoInputs:
    """Normalized inputs by channel group, NaN where missing; groups left out are masked."""

    space_time: dict[str, torch.Tensor]  # group -> (B, T, C_g, H, W)
    space: dict[str, torch.Tensor]  # group -> (B, C_g, H, W)
    time: dict[str, torch.Tensor]  # group -> (B, T, C_g)
    months: torch.Tensor  # (B, T) month index 0-11


@dataclass
class GalileoTokens:
    """Output tokens in the authors' layout, after the final LayerNorm, with their presence."""

    space_time: torch.Tensor  # (B, h, w, T, 7, D)
    space: torch.Tensor  # (B, h, w, 3, D)
    time: torch.Tensor  # (B, T, 3, D)
    static: torch.Tensor  # (B, 4, D)
    space_time_present: torch.Tensor  # (B, h, w, T, 7) bool
    space_present: torch.Tensor  # (B, h, w, 3)
    time_present: torch.Tensor  # (B, T, 3)
    static_present: torch.Tensor  # (B, 4)

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All tokens (B, N, D) and their presence (B, N), in the authors' order (space-time, space, time, static)."""
        B, D = self.static.shape[0], self.static.shape[-1]
        tokens = torch.cat([t.reshape(B, -1, D) for t in (self.space_time, self.space, self.time, self.static)], dim=1)
        present = torch.cat([m.reshape(B, -1) for m in (self.space_time_present, self.space_present, self.time_present,
                                                        self.static_present)], dim=1)  # fmt: skip
        return tokens, present

    def pooled(self) -> torch.Tensor:
        """(B, D) mean of the present tokens."""
        tokens, present = self.flat()
        return (tokens * present[..., None]).sum(1) / present.sum(1, keepdim=True)

    def per_patch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w, D) mean per patch of its present space(-time) tokens and the present time and static tokens;
        (B, h, w) valid where the patch has a present space(-time) token."""
        B, h, w, T, G, D = self.space_time.shape
        spatial = torch.cat([self.space_time.reshape(B, h, w, T * G, D), self.space], dim=3)  # (B, h, w, n, D)
        spatial_present = torch.cat([self.space_time_present.reshape(B, h, w, T * G), self.space_present], dim=3)
        shared = torch.cat([self.time.reshape(B, -1, D), self.static], dim=1)  # (B, m, D), every patch sees them
        shared_present = torch.cat([self.time_present.reshape(B, -1), self.static_present], dim=1)
        total = (spatial * spatial_present[..., None]).sum(3) + (shared * shared_present[..., None]).sum(1)[:, None, None]
        count = spatial_present.sum(3) + shared_present.sum(1)[:, None, None]
        return total / count[..., None], spatial_present.any(dim=3)


class Galileo(nn.Module):
    """The Galileo encoder; parameter names are those of the published `encoder.pt`."""

    def __init__(self, config: GalileoConfig = GalileoConfig()) -> None:
        super().__init__()
        D, quarter, P = config.embedding_size, config.embedding_size // 4, config.max_patch_size
        self.config = config
        self.space_time_embed = nn.ModuleDict({g: PatchEmbed(len(b), D, P) for g, b in SPACE_TIME_GROUPS.items()})
        self.space_embed = nn.ModuleDict({g: PatchEmbed(len(b), D, P) for g, b in SPACE_GROUPS.items()})
        self.time_embed = nn.ModuleDict({g: nn.Linear(len(b), D) for g, b in TIME_GROUPS.items()})
        self.static_embed = nn.ModuleDict({g: nn.Linear(len(b), D) for g, b in STATIC_GROUPS.items()})
        self.s_t_channel_embed = nn.Parameter(torch.zeros(len(SPACE_TIME_GROUPS), quarter))
        self.sp_channel_embed = nn.Parameter(torch.zeros(len(SPACE_GROUPS), quarter))
        self.t_channel_embed = nn.Parameter(torch.zeros(len(TIME_GROUPS), quarter))
        self.st_channel_embed = nn.Parameter(torch.zeros(len(STATIC_GROUPS), quarter))
        # Fixed tables; the authors store them as frozen parameters, so they are in the state dict.
        self.pos_embed = nn.Parameter(sincos_1d(torch.arange(config.max_sequence_length), quarter), requires_grad=False)
        self.month_embed = nn.Embedding.from_pretrained(month_table(quarter, torch.float32), freeze=True)
        self.blocks = nn.ModuleList(Block(D, config.num_heads, config.mlp_ratio, fused_qkv=False) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        self.apply(_xavier_linear)

    def forward(self, inputs: GalileoInputs, patch_size: int, gsd_m: float) -> GalileoTokens:
        tokens, present = self.embed(inputs, patch_size)
        shapes = [t.shape for t in tokens]
        tokens = self.add_encodings(tokens, inputs.months, patch_size * gsd_m / BASE_GSD_M)
        B, D = inputs.months.shape[0], self.config.embedding_size
        flat = torch.cat([t.reshape(B, -1, D) for t in tokens], dim=1)  # (B, N, D)
        flat_present = torch.cat([m.reshape(B, -1) for m in present], dim=1)  # (B, N)
        x, key_mask, order = pack_present(flat, flat_present)  # (B, L, D): present tokens only
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.norm(unpack(x, key_mask, order))  # (B, N, D); the authors normalize every token
        parts = x.split([int(np.prod(s[1:-1])) for s in shapes], dim=1)
        return GalileoTokens(*(p.reshape(s) for p, s in zip(parts, shapes, strict=True)), *present)

    def embed(self, inputs: GalileoInputs, patch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Linear projections of the groups present anywhere in the batch (zeros, masked, for the others)."""
        B, T = inputs.months.shape
        D = self.config.embedding_size
        any_image = next(iter([*inputs.space_time.values(), *inputs.space.values()]), None)
        if any_image is None:
            raise ExternalInputError("Galileo needs at least one space or space-time group (S1, S2, NDVI or SRTM)")
        H, W = any_image.shape[-2:]
        if H % patch or W % patch:
            raise ExternalInputError(f"the grid ({H} x {W} px) must be a multiple of the patch size {patch} px")
        h, w = H // patch, W // patch
        device = inputs.months.device

        def patch_present(x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, h, w): every value of the patch known
            return x.isfinite().all(1).view(-1, h, patch, w, patch).all(4).all(2)

        s_t, s_t_m = torch.zeros(B, h, w, T, len(SPACE_TIME_GROUPS), D, device=device), torch.zeros(B, h, w, T, len(SPACE_TIME_GROUPS), dtype=torch.bool, device=device)  # fmt: skip
        for i, (g, x) in enumerate((g, inputs.space_time.get(g)) for g in SPACE_TIME_GROUPS):
            if x is not None:
                x = x.reshape(B * T, *x.shape[2:])  # (B*T, C_g, H, W)
                s_t[:, :, :, :, i] = self.space_time_embed[g](x.nan_to_num(0.0), patch).reshape(B, T, h, w, D).permute(0, 2, 3, 1, 4)
                s_t_m[:, :, :, :, i] = patch_present(x).view(B, T, h, w).permute(0, 2, 3, 1)
        sp, sp_m = torch.zeros(B, h, w, len(SPACE_GROUPS), D, device=device), torch.zeros(B, h, w, len(SPACE_GROUPS), dtype=torch.bool, device=device)  # fmt: skip
        for i, (g, x) in enumerate((g, inputs.space.get(g)) for g in SPACE_GROUPS):
            if x is not None:
                sp[:, :, :, i] = self.space_embed[g](x.nan_to_num(0.0), patch)
                sp_m[:, :, :, i] = patch_present(x)
        t, t_m = torch.zeros(B, T, len(TIME_GROUPS), D, device=device), torch.zeros(B, T, len(TIME_GROUPS), dtype=torch.bool, device=device)  # fmt: skip
        for i, (g, x) in enumerate((g, inputs.time.get(g)) for g in TIME_GROUPS):
            if x is not None:
                t[:, :, i] = self.time_embed[g](x.nan_to_num(0.0))
                t_m[:, :, i] = x.isfinite().all(-1)
        st = torch.zeros(B, len(STATIC_GROUPS), D, device=device)  # no static group is fed: all masked
        st_m = torch.zeros(B, len(STATIC_GROUPS), dtype=torch.bool, device=device)
        return [s_t, sp, t, st], [s_t_m, sp_m, t_m, st_m]

    def add_encodings(self, tokens: list[torch.Tensor], months: torch.Tensor, gsd_ratio: float) -> list[torch.Tensor]:
        """Channel | timestep | month | space quarters, zero where a kind has no such position."""
        s_t, sp, t, st = tokens
        B, h, w, T, G, D = s_t.shape
        q = D // 4
        if T > self.config.max_sequence_length:
            raise ExternalInputError(f"Galileo takes at most {self.config.max_sequence_length} timesteps, got {T}")
        time_pos = self.pos_embed[:T]  # (T, q)
        month = self.month_embed(months)  # (B, T, q)
        space = spatial_table(h, w, q, gsd_ratio).to(s_t)  # (h, w, q)
        s_t_enc = torch.cat([
            self.s_t_channel_embed[None, None, None, None].expand(B, h, w, T, G, q),
            time_pos[None, None, None, :, None].expand(B, h, w, T, G, q),
            month[:, None, None, :, None].expand(B, h, w, T, G, q),
            space[None, :, :, None, None].expand(B, h, w, T, G, q),
        ], dim=-1)  # fmt: skip
        Gs = sp.shape[3]
        sp_enc = torch.cat([
            self.sp_channel_embed[None, None, None].expand(B, h, w, Gs, q),
            sp.new_zeros(B, h, w, Gs, 2 * q),
            space[None, :, :, None].expand(B, h, w, Gs, q),
        ], dim=-1)  # fmt: skip
        Gt = t.shape[2]
        t_enc = torch.cat([
            self.t_channel_embed[None, None].expand(B, T, Gt, q),
            time_pos[None, :, None].expand(B, T, Gt, q),
            month[:, :, None].expand(B, T, Gt, q),
            t.new_zeros(B, T, Gt, q),
        ], dim=-1)  # fmt: skip
        st_enc = torch.cat([self.st_channel_embed[None].expand(B, -1, q), st.new_zeros(B, st.shape[1], 3 * q)], dim=-1)
        return [s_t + s_t_enc, sp + sp_enc, t + t_enc, st + st_enc]


def _xavier_linear(module: nn.Module) -> None:
    """The authors' initialization of Linear layers (JAX ViT's xavier-uniform, zero bias); convs keep torch's."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def normalize(band: str, values: torch.Tensor) -> torch.Tensor:
    """The pretraining normalization of one band: (x - (mean - 2 std)) / (4 std); NDVI unchanged."""
    if band == "NDVI":
        return values
    mean, std = BAND_STATS[band]
    return (values - (mean - STD_MULTIPLIER * std)) / (2 * STD_MULTIPLIER * std)


def galileo_inputs(raw: RawInputs) -> GalileoInputs:
    """SpaceNit sensors -> Galileo's groups, normalized; groups without all their bands are left out (masked)."""
    T, months = timeline(raw, TEMPORAL_SENSORS)

    def group(names: Sequence[str], timesteps: int, spatial: bool = True) -> torch.Tensor | None:
        x = stack_bands(raw, [(b, SPACENIT_BANDS[b]) for b in names], timesteps, spatial=spatial)  # (B, T, C, H, W) | (B, T, C)
        if bool(x.isnan().all(dim=tuple(d for d in range(x.ndim) if d != 2)).any()):
            return None  # a band of the group is absent from the data
        return torch.stack([normalize(b, x[:, :, i]) for i, b in enumerate(names)], dim=2)

    space_time = {g: x for g, names in SPACE_TIME_GROUPS.items() if (x := group(names, T)) is not None}
    space = {}
    elevation = stack_bands(raw, [("elevation", SPACENIT_BANDS["elevation"])], 1)[:, 0, 0]  # (B, H, W)
    if not bool(elevation.isnan().all()):
        srtm = torch.stack([elevation, slope_degrees(elevation, raw.gsd_m)], dim=1)  # (B, 2, H, W)
        space["SRTM"] = torch.stack([normalize(b, srtm[:, i]) for i, b in enumerate(SPACE_GROUPS["SRTM"])], dim=1)
    time = {}
    if (era5 := group(TIME_GROUPS["ERA5"], T, spatial=False)) is not None:
        time["ERA5"] = era5
    month_index = torch.where(months > 0, months - 1, UNKNOWN_MONTH_INDEX)
    return GalileoInputs(space_time, space, time, month_index)


class GalileoEncoder:
    """Galileo behind SpaceNit's `ExternalEncoder` interface (see the module docstring for the mapping)."""

    sensors = SENSORS

    def __init__(self, model: Galileo, *, name: str | None = None, patch_size_px: int = DEFAULT_PATCH_SIZE,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.patch_size_px = patch_size_px
        self.name = name or ("galileo_nano" if patch_size_px == DEFAULT_PATCH_SIZE else f"galileo_nano(patch={patch_size_px})")
        self.pooled_dim = self.patch_dim = model.config.embedding_size

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path | None = None, **options) -> GalileoEncoder:
        """The published Galileo nano (encoder.pt and config.json, sha256-checked)."""
        model = Galileo(GalileoConfig.from_json(locate(CONFIG_FILE, weights_dir)))
        load_strict(model, load_state_dict(ENCODER_FILE, weights_dir), source=f"{ENCODER_FILE.folder}/{ENCODER_FILE.name}")
        return cls(model, **options)

    def random_twin(self, seed: int = 0) -> GalileoEncoder:
        """The same architecture and input mapping at the authors' initialization (seeded)."""
        torch.manual_seed(seed)
        return GalileoEncoder(Galileo(self.model.config), name=f"random-init({self.name},seed={seed})",
                              patch_size_px=self.patch_size_px, device=self.device)  # fmt: skip

    @torch.inference_mode()
    def encode(self, images: Mapping[str, np.ndarray | torch.Tensor], months: Mapping[str, np.ndarray | torch.Tensor],
               gsd_m: float, *, latlon: np.ndarray | torch.Tensor | None = None,
               bands: Mapping[str, Sequence[str]] | None = None) -> ExternalEmbeddings:  # fmt: skip
        raw = prepare_inputs(images, months, gsd_m, sensors=self.sensors, latlon=latlon, bands=bands)
        inputs = galileo_inputs(raw)
        inputs = GalileoInputs(*({k: v.to(self.device) for k, v in d.items()} for d in (inputs.space_time, inputs.space, inputs.time)),
                               inputs.months.to(self.device))  # fmt: skip
        tokens = self.model(inputs, self.patch_size_px, raw.gsd_m)
        patches, valid = tokens.per_patch()
        patches = torch.where(valid[..., None], patches, torch.nan)
        return ExternalEmbeddings(tokens.pooled().float().cpu().numpy(), patches.float().cpu().numpy(), valid.cpu().numpy())

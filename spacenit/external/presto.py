"""Presto: the pixel-timeseries model of Tseng, Cartuyvels, Zvonkov, Purohit, Rolnick and Kerner, "Lightweight,
Pre-trained Transformers for Remote Sensing Timeseries" (arXiv:2304.14065, 2023), written for SpaceNit. It
follows the authors' repository nasaharvest/presto at commit 13173d028f035abcbcc3b13829314323a5c15d02, the
commit of the published `data/default_model.pt`: the model of `single_file_presto.py` / `presto/presto.py`,
the band list and normalization of `presto/dataops/pipelines/s1_s2_era5_srtm.py`, and the EuroSAT evaluation
of `presto/eval/eurosat_eval.py` and `presto/eval/eval.py`.

Architecture (what the state dict holds; encoder and decoder, the decoder sharing the channel embedding):
- Input: one pixel's timeseries, T <= 24 steps of 17 normalized bands (S1 VV VH; S2 B2-B8, B8A, B11, B12;
  ERA5 temperature and precipitation; SRTM elevation and slope; NDVI), a Dynamic World class per step
  (9 = missing), the pixel's latitude and longitude, and each step's month.
- Tokens: per channel group (S1, S2 RGB, red edge, NIR 10 m, NIR 20 m, SWIR, ERA5, NDVI) and timestep a Linear
  projection; SRTM one token (its first timestep); Dynamic World an embedding per timestep; plus one location
  token (Linear of the cartesian x, y, z). Added to each: month (sin/cos table, 32) | channel group (learned, 32)
  | timestep (sin/cos with base 1000, 64); SRTM gets only its channel part, the location token nothing.
- Masked tokens are dropped (a group's token is masked when any of its bands is); 2 pre-norm blocks with a
  fused qkv projection. The embedding is LayerNorm(mean of the output tokens), the location token included.
- The decoder (2 blocks, 128 wide) puts a mask token at every dropped position, adds month (48) | channel (32)
  | timestep (48) embeddings and predicts every band group and the Dynamic World class per timestep.

An image chip -> Presto, as the authors' EuroSAT evaluation does it:
- The chip is cut into patches of `patch_size_px` x `patch_size_px` pixels (default 4 px: 16 x 16 patches on
  a 64 px EuroSAT chip; the authors evaluate patch sizes 1-64); each patch's raw values are averaged over its
  pixels (missing pixels left out) into one pixel timeseries, normalized, and encoded on its own.
- Per-patch map: the patch's embedding. Pooled: the mean and the standard deviation of the patch embeddings
  over the chip, concatenated (the "mean" aggregate of `EvalTaskWithAggregatedOutputs`): 2 x 128 = 256 values.
- Normalization (`S1_S2_ERA5_SRTM.normalize`): S1 dB (x + 25) / 25; S2 reflectance x 10000 / 10000; ERA5
  (K - 272.15) / 35 and precipitation (m) / 0.03; SRTM elevation / 2000 and slope (degrees) / 50; NDVI
  (B8 - B4) / (B8 + B4) from the averaged, normalized bands (0 where B8 + B4 <= 0).
- SpaceNit sources: `sentinel1`; S2 from `sentinel2_l1c`, else `sentinel2_l2a` (B01, B09, B10 unused);
  `era5` 2m_temperature and total_precipitation; `srtm` elevation with the slope derived on the input grid;
  NDVI from S2 B4 and B8, else an `ndvi` sensor. Bands a dataset lacks are missing, so their groups' tokens
  are masked, as the authors' evaluation masks S1, ERA5 and SRTM for EuroSAT. Dynamic World is always missing.
- Location: the patch's mean latitude and longitude from `latlon`; without one, latitude 0 and longitude 0
  (the model always saw real locations in pretraining, so this is an out-of-distribution constant).
- Months 1-12 become indices 0-11; unknown months count on from index 1 (February) at the first timestep, as
  the authors' EuroSAT evaluation (`start_month = 1`) and `month_to_tensor` do.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
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
from spacenit.external.weights import WeightsFile, load_state_dict, load_strict

MODEL_FILE = WeightsFile("presto", "default_model.pt", "559c9d76f525bdf2dd3774da8b1e7f1510769b73baacac12e9e4d8d5c67fbe65",
                         "nasaharvest/presto data/default_model.pt")  # fmt: skip

#: The 17 normalized bands, in the model's order.
BANDS = ("VV", "VH", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12",
         "temperature_2m", "total_precipitation", "elevation", "slope", "NDVI")  # fmt: skip
#: Channel groups in the authors' order (= channel embedding index); Dynamic World is index 9.
GROUPS: dict[str, tuple[str, ...]] = {
    "S1": ("VV", "VH"), "S2_RGB": ("B2", "B3", "B4"), "S2_Red_Edge": ("B5", "B6", "B7"), "S2_NIR_10m": ("B8",),
    "S2_NIR_20m": ("B8A",), "S2_SWIR": ("B11", "B12"), "ERA5": ("temperature_2m", "total_precipitation"),
    "SRTM": ("elevation", "slope"), "NDVI": ("NDVI",),
}  # fmt: skip
DW_CLASSES = 9  # Dynamic World classes; the value 9 means missing
DW_CHANNEL = len(GROUPS)
#: x -> (x + shift) / div per band (S1_S2_ERA5_SRTM's ADD_BY and DIVIDE_BY).
SHIFT = {"VV": 25.0, "VH": 25.0, "temperature_2m": -272.15}
DIV = {"VV": 25.0, "VH": 25.0, "temperature_2m": 35.0, "total_precipitation": 0.03, "elevation": 2000.0, "slope": 50.0,
       "NDVI": 1.0, **{b: 1e4 for b in BANDS[2:12]}}  # fmt: skip

_S2 = ("sentinel2_l1c", "sentinel2_l2a")
#: Presto band -> SpaceNit (sensor, band) candidates, first present wins (NDVI and slope are derived).
SPACENIT_BANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "VV": (("sentinel1", "VV"),), "VH": (("sentinel1", "VH"),),
    **{b: tuple((s, f"B{int(b[1:]):02d}") for s in _S2) for b in ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")},
    "B8A": tuple((s, "B8A") for s in _S2),
    "temperature_2m": (("era5", "2m_temperature"),), "total_precipitation": (("era5", "total_precipitation"),),
    "elevation": (("srtm", "elevation"),),
}  # fmt: skip
SENSORS = ("sentinel2_l1c", "sentinel2_l2a", "sentinel1", "ndvi", "srtm", "era5")
TEMPORAL_SENSORS = ("sentinel2_l1c", "sentinel2_l2a", "sentinel1", "ndvi", "era5")
UNKNOWN_START_MONTH_INDEX = 1
UNKNOWN_LATLON = (0.0, 0.0)
DEFAULT_PATCH_SIZE = 4
#: Pixel timeseries encoded at once (bounds memory on large scenes).
CHUNK = 16384


@dataclass(frozen=True)
class PrestoConfig:
    """The published model's shape (`Presto.construct()` defaults and config/default.json)."""

    embedding_size: int = 128
    channel_embed_ratio: float = 0.25
    month_embed_ratio: float = 0.25
    depth: int = 2
    mlp_ratio: float = 4.0
    num_heads: int = 8
    decoder_embedding_size: int = 128
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    max_sequence_length: int = 24


def sinusoid_table(positions: int, dim: int, base: float = 1000.0) -> torch.Tensor:
    """(positions, dim): position / base^(2 (j // 2) / dim), sin on even j and cos on odd j."""
    j = np.arange(dim)
    angle = np.arange(positions)[:, None] / np.power(base, 2 * (j // 2) / dim)[None, :]
    return torch.from_numpy(np.where(j % 2 == 0, np.sin(angle), np.cos(angle))).float()


def cartesian(latlon: torch.Tensor) -> torch.Tensor:
    """(N, 2) latitude, longitude in degrees -> (N, 3) unit vector x, y, z."""
    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)


def _group_index(group: str) -> list[int]:
    return [BANDS.index(b) for b in GROUPS[group]]


class Encoder(nn.Module):
    def __init__(self, config: PrestoConfig) -> None:
        super().__init__()
        D = config.embedding_size
        self.config = config
        self.channel_size = int(D * config.channel_embed_ratio)
        self.month_size = int(D * config.month_embed_ratio)
        pos_size = D - self.channel_size - self.month_size
        self.eo_patch_embed = nn.ModuleDict({g: nn.Linear(len(b), D) for g, b in GROUPS.items()})
        self.dw_embed = nn.Embedding(DW_CLASSES + 1, D)
        self.latlon_embed = nn.Linear(3, D)
        self.blocks = nn.ModuleList(Block(D, config.num_heads, config.mlp_ratio, fused_qkv=True) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D)
        self.pos_embed = nn.Parameter(sinusoid_table(config.max_sequence_length, pos_size)[None], requires_grad=False)
        self.month_embed = nn.Embedding.from_pretrained(month_table(self.month_size), freeze=True)
        self.channel_embed = nn.Embedding(len(GROUPS) + 1, self.channel_size)

    def forward(self, x: torch.Tensor, dynamic_world: torch.Tensor, latlon: torch.Tensor,
                months: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """x (N, T, 17) normalized, NaN where missing; dynamic_world (N, T); latlon (N, 2); months (N, T) 0-11
        -> block outputs (N, 1 + S, D) in the authors' token order (location, groups, Dynamic World), presence (N, 1 + S)."""
        N, T, _ = x.shape
        if T > self.config.max_sequence_length:
            raise ExternalInputError(f"Presto takes at most {self.config.max_sequence_length} timesteps, got {T}")
        month = self.month_embed(months)  # (N, T, 32)
        pos = self.pos_embed[:, :T].expand(N, T, -1)  # (N, T, 64)
        tokens = [self.latlon_embed(cartesian(latlon))[:, None]]  # (N, 1, D)
        present = [torch.ones(N, 1, dtype=torch.bool, device=x.device)]
        for index, group in enumerate(GROUPS):
            values = x[:, :1 if group == "SRTM" else T, _group_index(group)]  # (N, T or 1, C_g)
            channel = self.channel_embed.weight[index].expand(N, values.shape[1], -1)
            if group == "SRTM":  # static: no month and no timestep
                encoding = torch.cat([torch.zeros_like(month[:, :1]), channel, torch.zeros_like(pos[:, :1])], dim=-1)
            else:
                encoding = torch.cat([month, channel, pos], dim=-1)
            tokens.append(self.eo_patch_embed[group](values.nan_to_num(0.0)) + encoding)
            present.append(values.isfinite().all(-1))
        channel = self.channel_embed.weight[DW_CHANNEL].expand(N, T, -1)
        tokens.append(self.dw_embed(dynamic_world) + torch.cat([month, channel, pos], dim=-1))
        present.append(dynamic_world != DW_CLASSES)
        tokens, present = torch.cat(tokens, dim=1), torch.cat(present, dim=1)  # (N, 1 + S, D), (N, 1 + S)
        h, key_mask, order = pack_present(tokens, present)
        for block in self.blocks:
            h = block(h, key_mask)
        return unpack(h, key_mask, order), present

    def embed(self, hidden: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(N, D): LayerNorm of the mean of the present output tokens (the authors' `eval_task=True` output)."""
        return self.norm((hidden * present[..., None]).sum(1) / present.sum(1, keepdim=True))


class Decoder(nn.Module):
    def __init__(self, config: PrestoConfig, channel_embeddings: nn.Embedding) -> None:
        super().__init__()
        D, E = config.embedding_size, config.decoder_embedding_size
        self.decoder_embed = nn.Linear(D, E)
        self.mask_token = nn.Parameter(torch.zeros(E))
        self.decoder_blocks = nn.ModuleList(Block(E, config.decoder_num_heads, config.mlp_ratio, fused_qkv=True)
                                            for _ in range(config.decoder_depth))  # fmt: skip
        self.decoder_norm = nn.LayerNorm(E)
        self.eo_decoder_pred = nn.ModuleDict({g: nn.Linear(E, len(b)) for g, b in GROUPS.items()})
        self.dw_decoder_pred = nn.Linear(E, DW_CLASSES)
        self.channel_embeddings = channel_embeddings  # the encoder's, shared
        half = (E - channel_embeddings.embedding_dim) // 2
        self.pos_embed = nn.Parameter(sinusoid_table(config.max_sequence_length, half)[None], requires_grad=False)
        self.month_embed = nn.Embedding.from_pretrained(month_table(half), freeze=True)

    def forward(self, encoded: torch.Tensor, present: torch.Tensor, months: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """encoded (N, 1 + S, D) normalized encoder tokens, present (N, 1 + S), months (N, T)
        -> reconstructed bands (N, T, 17) (normalized units) and Dynamic World logits (N, T, 9)."""
        N, T = months.shape
        x = torch.where(present[..., None], self.decoder_embed(encoded), self.mask_token)
        month, pos = self.month_embed(months), self.pos_embed[:, :T].expand(N, T, -1)
        channels = self.channel_embeddings.weight
        encodings = [x.new_zeros(N, 1, x.shape[-1])]  # the location token gets none
        for index, group in enumerate([*GROUPS, "dynamic_world"]):
            if group == "SRTM":
                encodings.append(torch.cat([torch.zeros_like(month[:, :1]), channels[index].expand(N, 1, -1),
                                            torch.zeros_like(pos[:, :1])], dim=-1))  # fmt: skip
            else:
                encodings.append(torch.cat([month, channels[index].expand(N, T, -1), pos], dim=-1))
        x = x + torch.cat(encodings, dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        outputs, start = [], 1
        for group in GROUPS:
            length = 1 if group == "SRTM" else T
            prediction = self.eo_decoder_pred[group](x[:, start : start + length])
            outputs.append(prediction.expand(N, T, -1))  # SRTM's one prediction holds for every timestep
            start += length
        return torch.cat(outputs, dim=-1), self.dw_decoder_pred(x[:, start : start + T])


class Presto(nn.Module):
    """Encoder and decoder; parameter names are those of the published `default_model.pt`."""

    def __init__(self, config: PrestoConfig = PrestoConfig()) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, self.encoder.channel_embed)
        self.apply(_init_weights)

    def reconstruct(self, x: torch.Tensor, dynamic_world: torch.Tensor, latlon: torch.Tensor,
                    months: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Masked autoencoding as in pretraining: NaN bands in `x` are masked and predicted from the rest."""
        hidden, present = self.encoder(x, dynamic_world, latlon, months)
        return self.decoder(self.encoder.norm(hidden), present, months)


def _init_weights(module: nn.Module) -> None:
    """The authors' initialization: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(..., 17, h, w) raw values in BANDS order -> Presto units; NDVI from B8 and B4 where both are known."""
    shift = torch.tensor([SHIFT.get(b, 0.0) for b in BANDS], dtype=x.dtype)[:, None, None]
    div = torch.tensor([DIV[b] for b in BANDS], dtype=x.dtype)[:, None, None]
    x = (x + shift) / div
    nir, red = x[..., BANDS.index("B8"), :, :], x[..., BANDS.index("B4"), :, :]
    total = nir + red
    from_s2 = torch.where(total > 0, (nir - red) / total, torch.zeros_like(total))
    ndvi = torch.where(total.isfinite(), from_s2, x[..., BANDS.index("NDVI"), :, :])
    return torch.cat([x[..., :-1, :, :], ndvi[..., None, :, :]], dim=-3)


def patch_timeseries(raw: RawInputs, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SpaceNit inputs -> per patch pixel timeseries (B, T, 17, h, w) in Presto units (NaN missing), months (B, T) 0-11."""
    if raw.height % patch or raw.width % patch:
        raise ExternalInputError(f"the grid ({raw.height} x {raw.width} px) must be a multiple of the patch size {patch} px")
    T, months = timeline(raw, TEMPORAL_SENSORS)
    image_bands = [b for b in BANDS if b in SPACENIT_BANDS and b not in ("temperature_2m", "total_precipitation")]
    x = stack_bands(raw, [(b, SPACENIT_BANDS[b]) for b in image_bands], T)  # (B, T, C, H, W)
    by_band = dict(zip(image_bands, x.unbind(2), strict=True))
    by_band["slope"] = slope_degrees(by_band["elevation"], raw.gsd_m)
    by_band["NDVI"] = stack_bands(raw, [("NDVI", (("ndvi", "ndvi"),))], T)[:, :, 0]
    pixels = torch.stack([by_band.get(b, torch.full_like(by_band["B2"], torch.nan)) for b in BANDS], dim=2)
    B, _, C, H, W = pixels.shape
    h, w = H // patch, W // patch
    cells = pixels.view(B, T, C, h, patch, w, patch)
    with warnings.catch_warnings():  # all-missing patches: "mean of empty slice" -> NaN, which is what we want
        warnings.simplefilter("ignore", RuntimeWarning)
        means = cells.nanmean(dim=(4, 6))  # (B, T, C, h, w)
    era5 = stack_bands(raw, [(b, SPACENIT_BANDS[b]) for b in ("temperature_2m", "total_precipitation")], T, spatial=False)
    for i, b in enumerate(("temperature_2m", "total_precipitation")):
        means[:, :, BANDS.index(b)] = era5[:, :, i, None, None]  # the footprint's weather holds for every patch
    start = (UNKNOWN_START_MONTH_INDEX + torch.arange(T)) % 12
    return normalize(means), torch.where(months > 0, months - 1, start)


def patch_latlon(raw: RawInputs, patch: int) -> torch.Tensor:
    """(B, h, w, 2) mean latitude, longitude of each patch; the documented constant where no location is known."""
    B, h, w = raw.batch_size, raw.height // patch, raw.width // patch
    if raw.latlon is None:
        means = torch.full((B, h, w, 2), torch.nan)
    else:
        means = raw.latlon.view(B, h, patch, w, patch, 2).mean(dim=(2, 4))
    missing = means.isnan().any(-1, keepdim=True)
    if bool(missing.any()):
        warnings.warn(f"Presto: some samples have no location; using latitude, longitude {UNKNOWN_LATLON} for them",
                      stacklevel=3)  # fmt: skip
    return torch.where(missing, torch.tensor(UNKNOWN_LATLON), means)


class PrestoEncoder:
    """Presto behind SpaceNit's `ExternalEncoder` interface: chips become per-patch pixel timeseries."""

    sensors = SENSORS

    def __init__(self, model: Presto, *, name: str | None = None, patch_size_px: int = DEFAULT_PATCH_SIZE,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.patch_size_px = patch_size_px
        self.name = name or ("presto" if patch_size_px == DEFAULT_PATCH_SIZE else f"presto(patch={patch_size_px})")
        self.patch_dim = model.config.embedding_size
        self.pooled_dim = 2 * self.patch_dim

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path | None = None, **options) -> PrestoEncoder:
        """The published default Presto (default_model.pt, sha256-checked; encoder and decoder)."""
        model = Presto()
        load_strict(model, load_state_dict(MODEL_FILE, weights_dir), source=f"{MODEL_FILE.folder}/{MODEL_FILE.name}")
        return cls(model, **options)

    def random_twin(self, seed: int = 0) -> PrestoEncoder:
        """The same architecture and input mapping at the authors' initialization (seeded)."""
        torch.manual_seed(seed)
        return PrestoEncoder(Presto(self.model.config), name=f"random-init({self.name},seed={seed})",
                             patch_size_px=self.patch_size_px, device=self.device)  # fmt: skip

    def encode(self, images: Mapping[str, np.ndarray | torch.Tensor], months: Mapping[str, np.ndarray | torch.Tensor],
               gsd_m: float, *, latlon: np.ndarray | torch.Tensor | None = None,
               bands: Mapping[str, Sequence[str]] | None = None) -> ExternalEmbeddings:  # fmt: skip
        raw = prepare_inputs(images, months, gsd_m, sensors=self.sensors, latlon=latlon, bands=bands)
        series, month_index = patch_timeseries(raw, self.patch_size_px)  # (B, T, 17, h, w), (B, T)
        B, T, C, h, w = series.shape
        x = series.permute(0, 3, 4, 1, 2).reshape(B * h * w, T, C)  # one pixel timeseries per patch
        months_n = month_index[:, None, None].expand(B, h, w, T).reshape(-1, T)
        lat_lon = patch_latlon(raw, self.patch_size_px).reshape(-1, 2)
        embeddings, valid = [], []
        with torch.inference_mode():
            for start in range(0, len(x), CHUNK):
                part = slice(start, start + CHUNK)
                chunk_x = x[part].to(self.device)
                dynamic_world = torch.full(chunk_x.shape[:2], DW_CLASSES, dtype=torch.long, device=self.device)
                hidden, present = self.model.encoder(chunk_x, dynamic_world, lat_lon[part].to(self.device),
                                                     months_n[part].to(self.device))  # fmt: skip
                embeddings.append(self.model.encoder.embed(hidden, present).float().cpu())
                valid.append(present[:, 1:].any(dim=1).cpu())  # something besides the location token
        patches = torch.cat(embeddings).view(B, h, w, -1)
        ok = torch.cat(valid).view(B, h, w)
        patches = torch.where(ok[..., None], patches, torch.nan)
        return ExternalEmbeddings(_mean_and_std(patches, ok).numpy(), patches.numpy(), ok.numpy())


def _mean_and_std(patches: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, h, w, D) -> (B, 2 D): mean and standard deviation over the valid patches (unbiased when there are several)."""
    flat, ok = patches.flatten(1, 2), valid.flatten(1)  # (B, n, D), (B, n)
    count = ok.sum(1, keepdim=True).float()  # (B, 1)
    values = flat.nan_to_num(0.0) * ok[..., None]
    mean = values.sum(1) / count
    squares = ((flat.nan_to_num(0.0) - mean[:, None]) ** 2 * ok[..., None]).sum(1)
    std = (squares / (count - (count > 1).float())).sqrt()
    return torch.cat([mean, std], dim=-1)

"""Native resolution end to end (issue 16): one sample of Sentinel-2 at 10/20/60 m, Sentinel-1 at 10 m,
Landsat at 30 m and a 30 m DEM goes from GeoTIFFs through convert, the loader and a training step."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
import torch

from spacenit.arch.model_config import ModelConfig
from spacenit.arch.models import SpaceNitModel
from spacenit.conversion.convert import convert
from spacenit.data.format import load_dataset_info
from spacenit.data.loader import (
    BatchPlanner,
    GeoTileDataset,
    LoaderConfig,
    build_pretrain_loader,
    pretrain_geometry,
)
from spacenit.data.masking import MaskingConfig
from spacenit.data.stats import compute_stats, load_stats
from spacenit.sensors import LANDSAT
from spacenit.train.module import ObjectiveConfig
from tests.rasters import write_tif


def test_four_sensors_at_four_resolutions_convert_load_and_train(synthetic_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    shutil.copytree(synthetic_dir, root)
    rng = np.random.default_rng(1)
    for sample_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        b02 = sorted((sample_dir / "sentinel2_l2a").glob("*/B02.tif"))[0]
        with rasterio.open(b02) as src:  # Landsat on the same footprint, at 30 m
            origin, crs = (src.transform.c, src.transform.f), src.crs.to_string()
        values = rng.integers(5000, 20000, (LANDSAT.num_bands, 8, 8), dtype=np.uint16)
        write_tif(sample_dir / "landsat" / "2021-06-15.tif", values, crs=crs, res=30.0, origin=origin,
                  descriptions=LANDSAT.bands)  # fmt: skip
    out = tmp_path / "ds"
    assert convert(root, out, tile_size_px=24, progress=False).ok
    info = load_dataset_info(out)
    assert {s: [g.gsd_m for g in gs] for s, gs in info.grids.items()} == {
        "landsat": [30.0], "sentinel1": [10.0], "sentinel2_l2a": [10.0, 20.0, 60.0], "srtm": [30.0]}  # fmt: skip
    compute_stats(out, progress=False)
    dataset = GeoTileDataset(out, load_stats(out / "stats.json", out))
    config = ModelConfig(depth=1, decoder_depth=1)
    loader_config = LoaderConfig(num_workers=0, token_budget=300, min_patch_size=2, max_patch_size=8)
    planner = BatchPlanner(len(dataset), 8, 8, pretrain_geometry(dataset, config), loader_config, seed=0)
    sensors = [info.sensors[n] for n in dataset.sensor_names]
    torch.manual_seed(0)
    module = ObjectiveConfig().build(SpaceNitModel(config, sensors), MaskingConfig().build(), total_steps=3)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    for batch in build_pretrain_loader(dataset, planner, loader_config, rank=0, world_size=1, start_step=0, total_steps=3):
        # Every sensor's grids at their own pixel sizes, over the crop's ground.
        sides = {g.gsd_m: x.shape[-1] * g.gsd_m for grids in batch["images"].values() for g, x in grids.items()}
        assert set(sides) == {10.0, 20.0, 30.0, 60.0}
        reference = sides[10.0]  # the reference crop: coarser grids cover at least its ground, by less than a pixel more
        assert all(reference <= side < reference + gsd for gsd, side in sides.items()), sides
        out = module(batch, batch["patch_size"], torch.Generator().manual_seed(0), batch["step"])
        assert torch.isfinite(out["loss"])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        tok = module.model.encoder.tokenizer(batch["images"], batch["months"], batch["patch_size"], batch["gsd_m"])
        assert tok.tokens.shape[1] <= 300 and {p.sensor for p in tok.pixels} == set(info.sensors)

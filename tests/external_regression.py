"""Fixed outputs of the Galileo nano and Presto ports on a seeded input, so a refactor cannot change them silently.

`regression_input()` builds a small multi-sensor batch (Sentinel-2 L2A with a missing corner, Sentinel-1, SRTM,
ERA5; two timesteps, one unknown month; 16 x 16 px at 10 m near Lyon); `write()` runs both models with the
published weights and stores their outputs under tests/data/external/. Regenerate only when a change of the
outputs is intended, and say why in the commit:

    PYTHONPATH=. python -m tests.external_regression
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spacenit.sensors import SENTINEL

DATA_DIR = Path(__file__).parent / "data" / "external"
MODELS = ("galileo_nano", "presto")


def regression_input() -> dict:
    """Keyword arguments of `ExternalEncoder.encode`: images, months, gsd_m, latlon."""
    rng = np.random.default_rng(18)
    B, T, H, W = 2, 2, 16, 16
    s2 = rng.uniform(200, 4000, size=(B, T, 12, H, W)).astype(np.float32)
    s2[1, 0, :, :4, :4] = SENTINEL  # a missing corner: one patch without S2 at the first timestep
    s1 = rng.uniform(-25, -5, size=(B, T, 2, H, W)).astype(np.float32)
    dem = rng.uniform(150, 400, size=(B, 1, 1, H, W)).astype(np.float32)
    era5 = np.stack([rng.uniform(270, 300, (B, T)), rng.uniform(0, 0.2, (B, T)), rng.uniform(9e4, 1e5, (B, T)),
                     rng.normal(0, 3, (B, T)), rng.normal(0, 3, (B, T)), rng.uniform(0, 0.01, (B, T))], axis=-1)  # fmt: skip
    months = np.array([[4, 9], [0, 12]])
    lat = 45.75 - np.arange(H) * 1e-4
    lon = 4.85 + np.arange(W) * 1.4e-4
    latlon = np.broadcast_to(np.stack(np.meshgrid(lat, lon, indexing="ij"), axis=-1), (B, H, W, 2)).astype(np.float32)
    return {
        "images": {"sentinel2_l2a": s2, "sentinel1": s1, "srtm": dem, "era5": era5.astype(np.float32)},
        "months": {"sentinel2_l2a": months, "sentinel1": months, "era5": months},  # srtm is static: no months
        "gsd_m": 10.0,
        "latlon": latlon,
    }


def write(weights_dir: str | Path | None = None) -> list[Path]:
    from spacenit.external import load_external

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    inputs = regression_input()
    written = []
    for name in MODELS:
        out = load_external(name, weights_dir).encode(inputs["images"], inputs["months"], inputs["gsd_m"], latlon=inputs["latlon"])
        for part in ("pooled", "patches"):
            path = DATA_DIR / f"{name}_{part}.npy"
            np.save(path, getattr(out, part).astype(np.float32))
            written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")

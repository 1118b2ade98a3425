"""SpaceNit: multi-sensor geospatial foundation models, from GeoTIFFs to probes.

    from spacenit import load_encoder, embed
    encoder = load_encoder("models:/spacenit-encoder@champion")
    vectors = embed(encoder, {"sentinel2_l2a": "s2_chip.tif"})

(`spacenit.api`; imported on first use, so `import spacenit` stays light for the stages
that need neither torch nor MLflow.)
"""

__version__ = "0.1.0"

_API = ("Encoder", "embed", "load_encoder")


def __getattr__(name: str):
    if name in _API:
        from spacenit import api

        return getattr(api, name)
    raise AttributeError(f"module 'spacenit' has no attribute {name!r}")


__all__ = ["__version__", *_API]

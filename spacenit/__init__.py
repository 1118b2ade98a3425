"""SpaceNit: multi-sensor geospatial foundation models, from GeoTIFFs to probes."""

__version__ = "0.1.0"

#: The one place the container image is named; components and docs derive from it.
IMAGE_REPOSITORY = "ghcr.io/spacenit/spacenit"
IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
IMAGE_CUDA = f"{IMAGE_REPOSITORY}:{__version__}-cuda"

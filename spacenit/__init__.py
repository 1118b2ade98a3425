"""SpaceNit: multi-sensor geospatial foundation models, from GeoTIFFs to probes."""

__version__ = "0.1.0"

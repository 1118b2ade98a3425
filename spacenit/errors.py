"""The errors that mean "your input is wrong": the CLI prints them as one line, no traceback."""

from __future__ import annotations

from spacenit.config import ConfigError
from spacenit.conversion.convert import ConversionError
from spacenit.conversion.discover import InputLayoutError
from spacenit.conversion.geotiff import RasterReadError
from spacenit.data.format import DatasetFormatError, DatasetLockedError
from spacenit.data.stats import StatsError
from spacenit.evaluation.embed import EmbedError
from spacenit.evaluation.probe import ProbeError
from spacenit.external import ExternalInputError, WeightsError
from spacenit.sensors import SensorSpecError
from spacenit.train.checkpoint import CheckpointError
from spacenit.train.tracking import TrackingServerUnreachable

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ConversionError,
    InputLayoutError,
    RasterReadError,
    DatasetFormatError,
    DatasetLockedError,
    StatsError,
    EmbedError,
    ProbeError,
    ExternalInputError,
    WeightsError,
    SensorSpecError,
    CheckpointError,
    TrackingServerUnreachable,
    FileNotFoundError,
    KeyError,
)

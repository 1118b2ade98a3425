"""The published benchmark datasets `spacenit evaluate NAME` knows, and where under `--data-root` they live.

Each is read from its own release layout by a reader in `spacenit.conversion`
and written once as a SpaceNit dataset under the work directory (reused after):

| task | `--data-root` folder | kind | reader |
|---|---|---|---|
| `so2sat` | `so2sat_lcz42/` (training.h5, validation.h5, testing.h5) | classification, 17 LCZ | `conversion.so2sat` |
| `sen1floods11` | `sen1floods11/` (or its `v1.1/`) | segmentation, water | `conversion.sen1floods11` |
| `sen1floods11-bolivia` | the same; the Bolivia chips only, all test | segmentation | `conversion.sen1floods11` |
| `pastis` | `pastis/` (metadata.geojson, DATA_S2/, ANNOTATIONS/) | segmentation, 19 crop classes | `conversion.pastis` |
| `mados` | `mados/` (Scene_*/, splits/) | segmentation, 15 classes | `conversion.mados` |
| `cdl` | `cdl/` (`<year>_30m_cdls.tif`, imagery/) | segmentation, CDL codes | `conversion.cdl` |
| `geobench-<task>` | `geobench/<benchmark>/<task>/` (e.g. classification_v1.0/m-eurosat) | either | `conversion.geobench` |

`geobench-m-eurosat` (classification) and `geobench-m-cashew-plant` (segmentation) are the
two GEO-Bench tasks registered by name; `geobench-<task>` finds any other task folder
of the release under `geobench/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spacenit.evaluation.errors import ProbeError

GEOBENCH_PREFIX = "geobench-"


@dataclass(frozen=True)
class PublishedBenchmark:
    name: str
    #: "classification" or "segmentation"
    kind: str
    #: Folder under the data root.
    folder: str
    #: (source folder, output dataset dir) -> the dataset dir, written once.
    reader: Callable[[Path, Path], Path]

    def prepare(self, data_root: Path, work_dir: Path) -> Path:
        source = data_root / self.folder
        if not source.is_dir():
            raise ProbeError(f"task {self.name!r} reads {source}, which does not exist; put the published "
                             f"dataset there (see docs/evaluation.md, 'Benchmark datasets') or pass --data-root")  # fmt: skip
        return self.reader(source, work_dir / self.name)


def _so2sat(source: Path, out: Path) -> Path:
    from spacenit.conversion.so2sat import prepare_so2sat

    return prepare_so2sat(source, out)


def _sen1floods11(bolivia: bool) -> Callable[[Path, Path], Path]:
    def read(source: Path, out: Path) -> Path:
        from spacenit.conversion.sen1floods11 import prepare_sen1floods11

        return prepare_sen1floods11(source, out, bolivia=bolivia)

    return read


def _pastis(source: Path, out: Path) -> Path:
    from spacenit.conversion.pastis import prepare_pastis

    return prepare_pastis(source, out)


def _mados(source: Path, out: Path) -> Path:
    from spacenit.conversion.mados import prepare_mados

    return prepare_mados(source, out)


def _cdl(source: Path, out: Path) -> Path:
    from spacenit.conversion.cdl import prepare_cdl

    return prepare_cdl(source, out)


def _geobench(task: str) -> Callable[[Path, Path], Path]:
    def read(source: Path, out: Path) -> Path:
        from spacenit.conversion.geobench import prepare_geobench

        found = sorted(p for p in source.glob(f"*/{task}") if p.is_dir())
        if len(found) != 1:
            raise ProbeError(f"GEO-Bench task {task!r}: expected one folder {source}/<benchmark>/{task}/, found "
                             f"{[str(p) for p in found]}")  # fmt: skip
        return prepare_geobench(found[0], out)

    return read


BENCHMARKS: dict[str, PublishedBenchmark] = {
    b.name: b
    for b in (
        PublishedBenchmark("so2sat", "classification", "so2sat_lcz42", _so2sat),
        PublishedBenchmark("sen1floods11", "segmentation", "sen1floods11", _sen1floods11(False)),
        PublishedBenchmark("sen1floods11-bolivia", "segmentation", "sen1floods11", _sen1floods11(True)),
        PublishedBenchmark("pastis", "segmentation", "pastis", _pastis),
        PublishedBenchmark("mados", "segmentation", "mados", _mados),
        PublishedBenchmark("cdl", "segmentation", "cdl", _cdl),
        PublishedBenchmark("geobench-m-eurosat", "classification", "geobench", _geobench("m-eurosat")),
        PublishedBenchmark("geobench-m-cashew-plant", "segmentation", "geobench", _geobench("m-cashew-plant")),
    )
}


def knows(name: str) -> bool:
    return name in BENCHMARKS or (name.startswith(GEOBENCH_PREFIX) and len(name) > len(GEOBENCH_PREFIX))


def find(name: str) -> PublishedBenchmark:
    """The benchmark `name`; any `geobench-<task>` is a GEO-Bench task folder (its kind read from its files)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    if knows(name):
        return PublishedBenchmark(name, "auto", "geobench", _geobench(name.removeprefix(GEOBENCH_PREFIX)))
    raise ProbeError(f"unknown published benchmark {name!r}; known: {sorted(BENCHMARKS)} or {GEOBENCH_PREFIX}<task>")

"""The `spacenit` command: one verb per pipeline stage, each a thin wrapper over one function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spacenit import __version__
from spacenit.evaluation.cli_verbs import (
    EVALUATION_EXAMPLES,
    EVALUATION_VERBS,
    add_evaluation_verbs,
    run_evaluation_verb,
)
from spacenit.io_errors import EXIT_CODES_HELP, describe, exit_code

TRACKING_URI_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI; else sqlite:///mlflow.db, "
                     "except in a Kubernetes pod, where it is required)")  # fmt: skip

EXAMPLES = {
    "convert": """examples:
  spacenit convert demo-output/geotiffs demo-output/dataset --tile-size-px 48
  spacenit convert ../shared/data/eurosat_ms eurosat --layout class_folders --sensor sentinel2_l1c --workers 2
  spacenit convert data/ ds --manifest data/manifest.csv --storage hdf5 --assume-crs EPSG:32632
  spacenit convert data/ part-0 --partition 0/4      # then merge the 4 parts (merge_datasets)
  spacenit convert scenes/ tiles --layout class_folders --sensor landsat_sr --tile-scenes
  spacenit convert data/ ds-one-grid --one-grid       # every band resampled onto the 10 m grid

Every band is stored at the resolution its file has (Sentinel-2 band files: 10, 20 and
60 m grids over one footprint); nothing is upsampled unless you ask with --one-grid.
The tile (--tile-size-px, in pixels of the finest grid) must be whole pixels of every
grid: a multiple of 6 for Sentinel-2's 60 m bands, of 3 beside 30 m Landsat or a DEM.
Dense tasks: a per-pixel label raster <sample>/label.tif (or a manifest's label_raster).

input layouts:
  samples        <root>/<sample_id>/<sensor>/<YYYY-MM-DD>.tif, or .../<YYYY-MM-DD>/<band>.tif
                 (+ optional <root>/labels.csv: sample_id,label,split)
  class_folders  <root>/[<split>/]<class>/<file>.tif, one sensor (--sensor) per file
  --manifest     CSV or JSON lines: sample_id,sensor,path[,date,label|labels,split,bands],
                 paths relative to INPUT_DIR; `labels` (multi-label) is ;-separated in CSV
                 (see docs/format.md)

Bad inputs are listed with their reason in OUTPUT_DIR/convert_report.json while every good
sample is converted; the exit code is 1 when anything failed. Re-running resumes.""",
    "stats": """examples:
  spacenit stats demo-output/dataset            # writes demo-output/dataset/stats.json
  spacenit stats eurosat --workers 2 --max-samples 10000 --seed 0""",
    "pretrain": """examples:
  spacenit pretrain demo-output/dataset --stats demo-output/dataset/stats.json \\
      --output-dir demo-output/pretrain --set train.steps=100 --set train.global_batch_size=8
  spacenit pretrain DATA --stats DATA/stats.json --output-dir runs/m \\
      --experiment-config merged_bandsets_cross_random_masked_neg --dry-run     # print the resolved config
  # two processes on CPU (gloo), or N GPUs:
  ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m spacenit.cli pretrain ...
  accelerate launch --multi_gpu --num_processes 8 -m spacenit.cli pretrain ...

Re-running with the same --output-dir resumes from the newest checkpoint in
OUTPUT_DIR/checkpoints. The run, its metrics and the encoder are tracked in MLflow
(--tracking-uri, or MLFLOW_TRACKING_URI, default sqlite:///mlflow.db; experiment
--mlflow-experiment); the encoder is registered as --register-as with the alias
--alias. See docs/training.md.""",
    **EVALUATION_EXAMPLES,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spacenit",
        description="SpaceNit: GeoTIFFs -> shards -> stats -> pretraining -> embeddings -> probes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Run `spacenit VERB --help` for a working example of each stage.\n\n{EXIT_CODES_HELP}",
    )
    p.add_argument("--version", action="version", version=f"spacenit {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"{EXAMPLES[name]}\n\n{EXIT_CODES_HELP}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    c = verb("convert", "Convert GeoTIFFs into a SpaceNit dataset (Zarr or HDF5 shards + dataset.json).")
    c.add_argument("input_dir", type=Path, help="directory of GeoTIFFs")
    c.add_argument("output_dir", type=Path, help="dataset directory to write (created; re-runs resume)")
    c.add_argument("--layout", default="auto", choices=["auto", "samples", "class_folders", "manifest"])
    c.add_argument("--manifest", type=Path, default=None, help="CSV or JSON-lines manifest of the inputs")
    c.add_argument("--sensor", default="sentinel2_l1c", help="sensor of class_folders inputs (default: %(default)s)")
    c.add_argument("--sensor-yaml", type=Path, action="append", default=[], metavar="FILE",
                   help="register user sensors from a YAML file (repeatable; see docs/sensors.md)")  # fmt: skip
    c.add_argument("--tile-size-px", type=int, default=None,
                   help="tile side in pixels of the reference grid; every band is stored at its own resolution over "
                        "that footprint, so it must be whole pixels of every band (default: the smallest of at least "
                        "64 px that is, and a multiple of 8: 64 for 10 m data, 72 for Sentinel-2 at 10/20/60 m)")
    c.add_argument("--gsd-m", type=float, default=None,
                   help="pixel size of the reference grid, in metres (default: the finest band's)")
    c.add_argument("--one-grid", action="store_true",
                   help="resample every band onto the reference grid instead of storing it at its own resolution "
                        "(the layout of format version 2; for comparison and for models that need one grid)")
    c.add_argument("--max-raster-pixels", type=int, default=None, metavar="N",
                   help="refuse rasters declaring more pixels than this (default: 2e9)")
    c.add_argument("--max-tiles-per-scene", type=int, default=None, metavar="N",
                   help="with --tile-scenes, refuse scenes of more tiles than this (default: 20000)")
    c.add_argument("--label-ignore-value", type=float, default=255.0,
                   help="value of label rasters (label.tif) meaning 'no label' (default: %(default)s)")
    c.add_argument("--samples-per-shard", type=int, default=64)
    c.add_argument("--assume-crs", default=None, help="CRS for rasters without one, e.g. EPSG:32632")
    c.add_argument("--storage", default="zarr", choices=["zarr", "hdf5"], help="shard storage (default: %(default)s)")
    c.add_argument("--workers", type=int, default=1, help="processes converting samples in parallel")
    c.add_argument("--partition", type=_partition, default=None, metavar="INDEX/COUNT",
                   help="convert only samples whose sorted position %% COUNT == INDEX (a partial dataset)")  # fmt: skip
    c.add_argument("--tile-scenes", action="store_true",
                   help="split rasters larger than one tile into a grid of tiles, one sample each (ids "
                        "<id>_r<row>_c<col>); tiles without a valid pixel are skipped and counted. "
                        "Without it, a sample is the top-left tile of its raster")  # fmt: skip

    s = verb("stats", "Compute per-sensor, per-band count/mean/std/min/max and percentiles of a dataset.")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--output", type=Path, default=None, help="stats file (default: DATASET_DIR/stats.json)")
    s.add_argument("--workers", type=int, default=1, help="processes reading shards in parallel")
    s.add_argument("--max-samples", type=int, default=None, help="use a seeded random subset of this many samples")
    s.add_argument("--seed", type=int, default=0, help="seed of the subset (default: %(default)s)")

    t = verb("pretrain", "Pretrain an encoder (latent prediction, pixel reconstruction or both; accelerate; MLflow-tracked).")
    t.add_argument("dataset_dir", type=Path)
    t.add_argument("--stats", type=Path, required=True, help="stats.json written by `spacenit stats`")
    t.add_argument("--output-dir", type=Path, required=True,
                   help="where checkpoints are written; a re-run with the same directory resumes")  # fmt: skip
    t.add_argument("--config", type=Path, default=None, help="YAML config (see `--dry-run` for the keys)")
    t.add_argument("--model", default=None, help="model preset: spacenit_nano (default), spacenit_tiny, spacenit_base, spacenit_large")
    from spacenit.train.experiments import EXPERIMENTS

    t.add_argument("--experiment-config", default=None, choices=sorted(EXPERIMENTS), metavar="NAME",
                   help="named experiment config (bandset-merge series), applied over --model; one of: %(choices)s")  # fmt: skip
    _renamed(t, "--experiment", "--experiment-config NAME (a named config), or --mlflow-experiment NAME (the MLflow experiment)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")  # fmt: skip
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    t.add_argument("--mlflow-experiment", default="spacenit", help="MLflow experiment name (default: %(default)s)")
    t.add_argument("--register-as", default="spacenit-encoder", help="registered model name ('' to skip)")
    t.add_argument("--alias", default="champion", help="alias set on the new model version")

    add_evaluation_verbs(verb, _tracking_args)
    return p


def _partition(text: str) -> tuple[int, int]:
    """`2/8` -> (2, 8)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not INDEX/COUNT, e.g. 0/4") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text!r}: INDEX must be in 0..COUNT-1")
    return index, count


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)
    p.add_argument("--mlflow-experiment", default="spacenit", help="MLflow experiment name (default: %(default)s)")
    _renamed(p, "--experiment", "--mlflow-experiment NAME")


class _RenamedOption(argparse.Action):
    """An option that was renamed: giving it is an error that names the new spelling."""

    def __init__(self, option_strings, dest, replacement: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} was renamed (it meant a config in `pretrain` and an MLflow experiment "
                     f"elsewhere): use {self.replacement}")  # fmt: skip


def _renamed(p: argparse.ArgumentParser, old: str, replacement: str) -> None:
    p.add_argument(old, dest=f"renamed_{old.strip('-').replace('-', '_')}", action=_RenamedOption, replacement=replacement)


def _run(args: argparse.Namespace) -> int:
    if args.verb == "convert":
        from spacenit.conversion.convert import REPORT_JSON, convert
        from spacenit.sensors import REGISTRY

        for path in args.sensor_yaml:
            REGISTRY.load_yaml(path)
        if args.input_dir.is_file():
            from spacenit.conversion.discover import InputLayoutError

            raise InputLayoutError(f"{args.input_dir} is a file; convert takes the directory of GeoTIFFs "
                                   "(a manifest goes with --manifest FILE, its paths relative to that directory)")  # fmt: skip
        report = convert(
            args.input_dir, args.output_dir, layout=args.layout, sensor=args.sensor,
            tile_size_px=args.tile_size_px, gsd_m=args.gsd_m, samples_per_shard=args.samples_per_shard,
            assume_crs=args.assume_crs, workers=args.workers, manifest=args.manifest,
            storage=args.storage, partition=args.partition, tile_scenes=args.tile_scenes, one_grid=args.one_grid,
            label_ignore_value=args.label_ignore_value,
            **{k: v for k, v in (("max_raster_pixels", args.max_raster_pixels),
                                 ("max_tiles_per_scene", args.max_tiles_per_scene)) if v is not None},
        )  # fmt: skip
        print(f"converted {report.num_samples} samples into {args.output_dir} ({report.num_shards} shards, {report.shards_skipped} already done)")
        if report.empty_tiles:
            print(f"skipped {report.empty_tiles} tile(s) without a valid pixel")
        if report.absent_timesteps:
            print(f"{len(report.absent_timesteps)} date(s) had no valid pixel under their tile and are stored as missing "
                  f"(listed in {args.output_dir / REPORT_JSON})")
        if report.dropped_sensors:
            print(f"left out sensor(s) {report.dropped_sensors}: no converted sample has them")
        if report.failures:
            print(f"{len(report.failures)} input(s) failed; see {args.output_dir / REPORT_JSON}:", file=sys.stderr)
            for f in report.failures[:10]:
                print(f"  {f.path}: {f.reason}", file=sys.stderr)
            return 1
        return 0
    if args.verb == "stats":
        from spacenit.data.stats import StatsError, compute_stats

        if args.dataset_dir.is_file():
            hint = f" (here, probably {args.dataset_dir.parent})" if args.dataset_dir.name == "dataset.json" else ""
            raise StatsError(f"{args.dataset_dir} is a file; stats takes the dataset directory `spacenit convert` wrote{hint}")

        path = compute_stats(args.dataset_dir, args.output, workers=args.workers,
                             max_samples=args.max_samples, seed=args.seed)  # fmt: skip
        print(f"wrote {path}")
        return 0
    if args.verb == "pretrain":
        from spacenit.train.pretrain import build_config, pretrain

        cfg = build_config(args.model, args.overrides, args.config, experiment=args.experiment_config)
        if args.dry_run:
            print(cfg.to_yaml(), end="")
            return 0
        result = pretrain(
            args.dataset_dir, args.stats, args.output_dir, cfg, tracking_uri=args.tracking_uri,
            experiment=args.mlflow_experiment, register_as=args.register_as or None, alias=args.alias or None,
        )  # fmt: skip
        if result.run_id:
            print(f"checkpoint: {result.checkpoint_dir}\nmlflow run: {result.run_id}\nmodel: {result.model_uri} (version {result.model_version})")
        return 0
    if args.verb in EVALUATION_VERBS:
        return run_evaluation_verb(args)
    raise AssertionError(args.verb)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from spacenit.errors import USER_ERRORS

    try:
        return _run(args)
    except USER_ERRORS as e:
        # Errors about the user's inputs: one clear line, no traceback.
        print(f"spacenit {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        code = exit_code(e)
        if code is None:
            raise
        # A full disk or an unwritable output: one line naming the path, and a code of its own.
        print(f"spacenit {args.verb}: error: {describe(e, _output_of(args))}", file=sys.stderr)
        return code


def _output_of(args: argparse.Namespace) -> Path | None:
    """Where the verb writes, named when the system's error names no file."""
    if args.verb == "stats":
        return args.output or args.dataset_dir / "stats.json"
    return next((getattr(args, name) for name in ("output_dir", "output", "store") if getattr(args, name, None)), None)


if __name__ == "__main__":
    sys.exit(main())

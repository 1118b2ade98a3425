"""The `spacenit` command: one verb per pipeline stage, each a thin wrapper over one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from spacenit import __version__

EXAMPLES = {
    "convert": """examples:
  spacenit convert demo-output/geotiffs demo-output/dataset --tile-size-px 32
  spacenit convert ../shared/data/eurosat_ms eurosat --layout class_folders --sensor sentinel2_l1c

input layouts:
  samples        <root>/<sample_id>/<sensor>/<YYYY-MM-DD>.tif  (+ optional <root>/labels.csv:
                 sample_id,label,split)
  class_folders  <root>/[<split>/]<class>/<file>.tif, one sensor (--sensor) per file

Bad inputs are listed with their reason in OUTPUT_DIR/convert_report.json while every good
sample is converted; the exit code is 1 when anything failed. Re-running resumes.""",
    "stats": """example:
  spacenit stats demo-output/dataset            # writes demo-output/dataset/stats.json""",
    "pretrain": """examples:
  spacenit pretrain demo-output/dataset --stats demo-output/dataset/stats.json \\
      --output-dir demo-output/pretrain --set train.steps=100 --set train.global_batch_size=8
  # two processes on CPU (gloo), or N GPUs:
  ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m spacenit.cli pretrain ...

The run, its metrics and the encoder are tracked in MLflow (--tracking-uri, or
MLFLOW_TRACKING_URI, default sqlite:///mlflow.db); the encoder is registered as
--register-as with the alias --alias.""",
    "embed": """examples:
  spacenit embed demo-output/pretrain/checkpoint demo-output/dataset demo-output/embeddings.zarr
  spacenit embed models:/spacenit-encoder@champion demo-output/dataset emb.zarr \\
      --tracking-uri sqlite:///demo-output/mlflow.db""",
    "probe": """example:
  spacenit probe demo-output/embeddings.zarr demo-output/probe.json --tracking-uri sqlite:///demo-output/mlflow.db""",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spacenit",
        description="SpaceNit: GeoTIFFs -> shards -> stats -> pretraining -> embeddings -> probes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `spacenit VERB --help` for a working example of each stage.",
    )
    p.add_argument("--version", action="version", version=f"spacenit {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    c = verb("convert", "Convert GeoTIFFs into a SpaceNit dataset (Zarr shards + dataset.json).")
    c.add_argument("input_dir", type=Path, help="directory of GeoTIFFs")
    c.add_argument("output_dir", type=Path, help="dataset directory to write (created; re-runs resume)")
    c.add_argument("--layout", default="auto", choices=["auto", "samples", "class_folders"])
    c.add_argument("--sensor", default="sentinel2_l1c", help="sensor of class_folders inputs (default: %(default)s)")
    c.add_argument("--tile-size-px", type=int, default=64, help="tile side in pixels (default: %(default)s)")
    c.add_argument("--gsd-m", type=float, default=10.0, help="reference grid pixel size in metres (default: %(default)s)")
    c.add_argument("--samples-per-shard", type=int, default=64)
    c.add_argument("--assume-crs", default=None, help="CRS for rasters without one, e.g. EPSG:32632")
    c.add_argument("--workers", type=int, default=1, help="processes converting shards in parallel")

    s = verb("stats", "Compute per-sensor, per-band mean/std/min/max/count of a dataset.")
    s.add_argument("dataset_dir", type=Path)
    s.add_argument("--output", type=Path, default=None, help="stats file (default: DATASET_DIR/stats.json)")

    t = verb("pretrain", "Pretrain an encoder with masked latent prediction (accelerate; MLflow-tracked).")
    t.add_argument("dataset_dir", type=Path)
    t.add_argument("--stats", type=Path, required=True, help="stats.json written by `spacenit stats`")
    t.add_argument("--output-dir", type=Path, required=True, help="where the checkpoint is written")
    t.add_argument("--config", type=Path, default=None, help="YAML config (see `--dry-run` for the keys)")
    t.add_argument("--model", default=None, help="model preset: spacenit_nano (default), spacenit_tiny, spacenit_base, spacenit_large")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")  # fmt: skip
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    _tracking_args(t)
    t.add_argument("--register-as", default="spacenit-encoder", help="registered model name ('' to skip)")
    t.add_argument("--alias", default="champion", help="alias set on the new model version")

    e = verb("embed", "Write pooled per-sample embeddings of a dataset.")
    e.add_argument("model", help="checkpoint directory or MLflow URI (models:/name@alias)")
    e.add_argument("dataset_dir", type=Path)
    e.add_argument("output", type=Path, help="embeddings to write (a Zarr group, e.g. emb.zarr)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs")

    r = verb("probe", "kNN and linear probes on embeddings; metrics to JSON and MLflow.")
    r.add_argument("embeddings", type=Path)
    r.add_argument("output", type=Path, help="metrics JSON to write")
    r.add_argument("-k", type=int, default=20, help="neighbours for kNN (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--test-fraction", type=float, default=0.3)
    _tracking_args(r)
    return p


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="spacenit", help="MLflow experiment name")


def _run(args: argparse.Namespace) -> int:
    if args.verb == "convert":
        from spacenit.conversion.convert import REPORT_JSON, convert

        report = convert(
            args.input_dir, args.output_dir, layout=args.layout, sensor=args.sensor,
            tile_size_px=args.tile_size_px, gsd_m=args.gsd_m, samples_per_shard=args.samples_per_shard,
            assume_crs=args.assume_crs, workers=args.workers,
        )  # fmt: skip
        print(f"converted {report.num_samples} samples into {args.output_dir} ({report.num_shards} shards, {report.shards_skipped} already done)")
        if report.failures:
            print(f"{len(report.failures)} input(s) failed; see {args.output_dir / REPORT_JSON}:", file=sys.stderr)
            for f in report.failures[:10]:
                print(f"  {f.path}: {f.reason}", file=sys.stderr)
            return 1
        return 0
    if args.verb == "stats":
        from spacenit.data.stats import compute_stats

        print(f"wrote {compute_stats(args.dataset_dir, args.output)}")
        return 0
    if args.verb == "pretrain":
        from spacenit.train.pretrain import build_config, pretrain

        cfg = build_config(args.model, args.overrides, args.config)
        if args.dry_run:
            print(cfg.to_yaml(), end="")
            return 0
        result = pretrain(
            args.dataset_dir, args.stats, args.output_dir, cfg, tracking_uri=args.tracking_uri,
            experiment=args.experiment, register_as=args.register_as or None, alias=args.alias or None,
        )  # fmt: skip
        if result.run_id:
            print(f"checkpoint: {result.checkpoint_dir}\nmlflow run: {result.run_id}\nmodel: {result.model_uri} (version {result.model_version})")
        return 0
    if args.verb == "embed":
        from spacenit.evaluation.embed import embed

        print(f"wrote {embed(args.model, args.dataset_dir, args.output, batch_size=args.batch_size, tracking_uri=args.tracking_uri)}")
        return 0
    if args.verb == "probe":
        from spacenit.evaluation.probe import probe

        metrics = probe(args.embeddings, args.output, k=args.k, seed=args.seed, test_fraction=args.test_fraction,
                        tracking_uri=args.tracking_uri, experiment=args.experiment)  # fmt: skip
        print(json.dumps(metrics, indent=1))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())

"""The evaluation verbs of the `spacenit` command: embed, probe, evaluate, report.

Kept beside the functions they wrap so spacenit/cli.py only hands over: it
calls `add_evaluation_verbs` while building its parser and
`run_evaluation_verb` for these verbs. Each verb parses, calls one function
and prints what it wrote. Heavy imports happen inside the runners.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

#: `spacenit.evaluation.pooling.POOLINGS`, here without importing torch for `--help`.
POOLINGS = ("mean", "cls", "both")

EVALUATION_VERBS = ("embed", "probe", "evaluate", "report", "register")

EVALUATION_EXAMPLES = {
    "register": """examples:
  spacenit register galileo_nano --tracking-uri sqlite:///mlflow.db      # -> models:/galileo-nano@published
  spacenit embed models:/galileo-nano@published demo-output/dataset galileo.zarr
  mlflow models serve -m models:/galileo-nano@published -p 5001 --env-manager local

The model holds the published weights (sha256-checked when registering and again when
loading), their LICENSE and the SpaceNit code that runs them.""",
    "embed": """examples:
  spacenit embed demo-output/pretrain/checkpoint demo-output/dataset demo-output/embeddings.zarr
  spacenit embed models:/spacenit-encoder@champion demo-output/dataset emb.zarr --patch-maps \\
      --tracking-uri sqlite:///demo-output/mlflow.db
  # an L1C model on L2A data (B10 missing -> no data):
  spacenit embed ckpt bigearthnet-ds emb.zarr --sensor-map sentinel2_l1c=sentinel2_l2a --allow-missing-bands
  # a GeoTIFF scene larger than the window -> georeferenced per-patch embeddings:
  spacenit embed ckpt scene.tif scene_emb.tif --zarr scene_emb.zarr --bands B2,B3,B4,B5,B6,B7 \\
      --window-px 64 --overlap-px 16 --allow-missing-bands   # the model's other bands: no data

  # a Sentinel-2 scene as band files at 10, 20 and 60 m (each read at its own resolution), 20 m output:
  spacenit embed ckpt S2_scene_bands/ s2_emb.tif --window-px 96 --overlap-px 24 --output-gsd-m 20
  spacenit embed galileo_nano scene.tif galileo.tif --bands B2,B3,B4,B8   # a published model

A .tif input (or a folder of band files) is embedded window by window (overlapping windows,
blended) into a Cloud-Optimized GeoTIFF (and/or --zarr) on the scene's grid coarsened by the
patch size, or on --output-gsd-m pixels.""",
    "probe": """examples:
  spacenit probe demo-output/embeddings.zarr demo-output/probe.json --tracking-uri sqlite:///demo-output/mlflow.db
  # train on one dataset's embeddings, test on another's (its test split, or all of it):
  spacenit probe region-a.zarr transfer.json --test region-b.zarr

Train/test come from the samples' split (train, val/validation/valid/dev, test); without
one the probe says so and uses a seeded 70/30 split. Metrics come with 95% bootstrap CIs
(<metric>_ci_low/_ci_high); confusion matrices go to MLflow.""",
    "evaluate": """examples:
  spacenit evaluate eurosat --model nano=out/checkpoint --baseline random_init --baseline raw_pixels \\
      --probes knn,linear,prototypical --n-train 1,5,10,all --store eval/results.sqlite
  spacenit evaluate bigearthnet --model nano=models:/spacenit-encoder@champion --sensor-map auto
  spacenit evaluate path/to/converted-labelled-dataset --model nano=out/checkpoint --probes knn
  # never-seen data: a probe trained on one task, tested on another (raw pixels: the training side's stats)
  spacenit evaluate --train eurosat --test path/to/other-eurosat-like-dataset --baseline raw_pixels
  # one report of every model x probe x dataset, logged to MLflow:
  spacenit evaluate eurosat bigearthnet so2sat --model nano=out/checkpoint --pooling mean,cls \\
      --baseline random_init --baseline raw_pixels --baseline galileo_nano --baseline presto --report eval/report.md
  spacenit evaluate eurosat --baseline galileo_nano --baseline presto --baseline random_init

Tasks: eurosat, bigearthnet, so2sat, sen1floods11, sen1floods11-bolivia, pastis, mados, cdl,
geobench-<task> (each from its folder under --data-root, docs/evaluation.md), or a converted
dataset with labels. Segmentation tasks are prepared but scored by the dense task type. Cells
already in --store are skipped; each new one is an MLflow run with CIs and a confusion matrix.""",
    "report": """examples:
  spacenit report eval/results.sqlite eval/report.md --tracking-uri sqlite:///eval/mlflow.db
  spacenit report eval/results.sqlite eurosat.md --task eurosat --no-mlflow""",
}


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return key, value


def _n_train(text: str) -> list[int]:
    return [-1 if v.strip() == "all" else int(v) for v in text.split(",")]


def add_evaluation_verbs(verb: Callable[[str, str], argparse.ArgumentParser],
                         tracking_args: Callable[[argparse.ArgumentParser], None]) -> None:  # fmt: skip
    """Add the evaluation sub-parsers; `verb(name, help)` makes one, `tracking_args` adds MLflow options."""
    e = verb("embed", "Write embeddings of a dataset (pooled, optionally per-patch maps), or of a GeoTIFF scene.")
    e.add_argument("model", help="checkpoint directory, MLflow URI (models:/name@alias), or galileo_nano / presto "
                                 "(published weights; or their models:/ URI after `spacenit register`)")
    e.add_argument("dataset_dir", type=Path, help="a converted dataset; or a GeoTIFF scene (.tif), or a folder of a "
                                                  "scene's band files (Sentinel-2's 10/20/60 m bands, each read at its own resolution)")
    e.add_argument("output", type=Path, help="embeddings to write: a Zarr group (emb.zarr), or for a scene a .tif or .zarr")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs")
    e.add_argument("--patch-maps", action="store_true", help="also write per-patch embedding maps (N, h, w, D)")
    e.add_argument("--workers", type=int, default=None, help="loader processes (default: cores - 1, at most 4)")
    e.add_argument("--sensor-map", type=_key_value, action="append", default=[], metavar="MODEL=DATA",
                   help="feed model sensor MODEL from data sensor DATA, bands matched by name (repeatable)")  # fmt: skip
    e.add_argument("--allow-missing-bands", action="store_true", help="fill model bands the data lacks with no-data")
    e.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="the pooled vector: mean of the tokens, cls (register tokens) or both (default: %(default)s)")  # fmt: skip
    scene = e.add_argument_group("GeoTIFF scenes")
    scene.add_argument("--zarr", type=Path, default=None, help="also write the scene embedding as Zarr here")
    scene.add_argument("--bands", default=None, help="comma-separated band names of the scene, in file order")
    scene.add_argument("--sensor", default=None, help="model sensor the scene feeds (default: most shared band names)")
    scene.add_argument("--window-px", type=int, default=64, help="window side in pixels (default: %(default)s)")
    scene.add_argument("--overlap-px", type=int, default=16, help="overlap of neighbouring windows (default: %(default)s)")
    scene.add_argument("--month", type=int, default=0, help="acquisition month 1-12 of the scene (0: unknown)")
    scene.add_argument("--output-gsd-m", type=float, default=None,
                       help="pixel size of the output grid in metres (same CRS and origin; each pixel takes the embedding "
                            "of the patch its centre lies in); default: one pixel per patch")

    r = verb("probe", "Probes (kNN, linear, prototypical) on embeddings; metrics with CIs to JSON and MLflow.")
    r.add_argument("embeddings", type=Path, help="embeddings to probe (with --test: to train on)")
    r.add_argument("output", type=Path, help="metrics JSON to write")
    r.add_argument("--test", type=Path, default=None, metavar="EMBEDDINGS",
                   help="test on these embeddings (their test split, or all) instead of a split of the first")  # fmt: skip
    r.add_argument("-k", type=int, default=20, help="neighbours for kNN (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--test-fraction", type=float, default=0.3)
    r.add_argument("--probes", default="knn,linear", help="comma-separated: knn, linear, prototypical (default: %(default)s)")
    tracking_args(r)

    v = verb("evaluate", "Benchmark models x probes x training sizes on tasks; results to a SQLite store and MLflow.")
    v.add_argument("task", nargs="*", help="tasks: eurosat, bigearthnet, so2sat, ..., or paths of converted labelled datasets")
    v.add_argument("--train", default=None, metavar="TASK", help="train the probes on this task (with --test)")
    v.add_argument("--test", action="append", default=[], metavar="TASK",
                   help="test the probes trained on --train on this task (repeatable): data the model never saw")  # fmt: skip
    v.add_argument("--model", type=_key_value, action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="a SpaceNit checkpoint or models:/ URI under a name (repeatable)")  # fmt: skip
    v.add_argument("--baseline", action="append", default=[], metavar="NAME",
                   help="random_init: each --model's and external baseline's architecture untrained; raw_pixels: "
                        "band mean/std; galileo_nano, presto: published external models (repeatable)")  # fmt: skip
    v.add_argument("--adapter", action="append", default=[], metavar="NAME|module:factory", help="an external encoder adapter")
    v.add_argument("--probes", default="knn,linear,prototypical", help="comma-separated of knn, linear, prototypical, attentive, finetune")
    v.add_argument("--pooling", default="mean", help="comma-separated poolings of each --model: mean, cls, both (default: %(default)s)")
    v.add_argument("--report", type=Path, default=None, help="also write the markdown report of these tasks here (and log it to MLflow)")
    v.add_argument("--n-train", type=_n_train, default=[-1], help="samples per class, e.g. 1,5,10,all (default: all)")
    v.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    v.add_argument("-k", type=int, default=20)
    v.add_argument("--sensor-map", default=None, help="'auto' to run models on related sensors by band name")
    v.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                   help="where the tasks' folders are (eurosat_ms/, bigearthnet/, so2sat_lcz42/, ...)")  # fmt: skip
    v.add_argument("--work-dir", type=Path, default=Path("eval-work"), help="prepared datasets are cached here")
    v.add_argument("--store", type=Path, default=Path("eval-work/results.sqlite"), help="results store (SQLite)")
    v.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    tracking_args(v)

    rep = verb("report", "Write the markdown report (each probe x each model, with CIs) from a results store.")
    rep.add_argument("store", type=Path)
    rep.add_argument("output", type=Path)
    rep.add_argument("--task", action="append", default=None, help="only these tasks (repeatable)")
    rep.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    tracking_args(rep)

    g = verb("register", "Register a published external encoder (galileo_nano, presto) in the MLflow Model Registry.")
    g.add_argument("encoder", choices=("galileo_nano", "presto"), help="which published encoder")
    g.add_argument("--name", default=None, help="registered model name (default: the encoder's, with dashes)")
    g.add_argument("--alias", default="published", help="alias set on the new version ('' for none; default: %(default)s)")
    g.add_argument("--weights-dir", type=Path, default=None,
                   help="folder holding galileo_nano/ and presto/ (default: $SPACENIT_WEIGHTS_DIR, else ../shared/weights)")
    g.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    g.add_argument("--mlflow-experiment", default="spacenit-external", help="experiment of the registration run")


def run_evaluation_verb(args: argparse.Namespace) -> int:
    if args.verb == "embed":
        return _embed(args)
    if args.verb == "probe":
        from spacenit.evaluation.probe import probe

        metrics = probe(args.embeddings, args.output, k=args.k, seed=args.seed, test_fraction=args.test_fraction,
                        tracking_uri=args.tracking_uri, experiment=args.mlflow_experiment, probes=args.probes.split(","),
                        test_embeddings=args.test)  # fmt: skip
        print(json.dumps(metrics, indent=1))
        return 0
    if args.verb == "evaluate":
        return _evaluate(args)
    if args.verb == "report":
        from spacenit.evaluation.results import ResultsStore

        if not args.store.is_file():
            raise FileNotFoundError(f"results store {args.store} does not exist; fill it with `spacenit evaluate`")
        _report(ResultsStore(args.store), args.output, args.task, args)
        return 0
    if args.verb == "register":
        from spacenit.evaluation.register import register_external

        uri, version = register_external(args.encoder, model_name=args.name, alias=args.alias or None,
                                         weights_dir=args.weights_dir, tracking_uri=args.tracking_uri,
                                         experiment=args.mlflow_experiment)  # fmt: skip
        print(f"registered {args.encoder} as {uri} (version {version})")
        return 0
    raise AssertionError(args.verb)


def _embed(args: argparse.Namespace) -> int:
    from spacenit.evaluation.embed import EmbedError
    from spacenit.evaluation.georaster import TIFF_SUFFIXES

    source = args.dataset_dir
    if source.is_file() and source.suffix.lower() not in TIFF_SUFFIXES:
        raise EmbedError(f"{source} is a file, neither a dataset directory (`spacenit convert`) "
                         "nor a GeoTIFF scene (.tif)")  # fmt: skip
    band_files = source.is_dir() and not (source / "dataset.json").exists() and any(
        p.suffix.lower() in TIFF_SUFFIXES for p in source.iterdir())  # fmt: skip
    if source.is_file() or band_files:
        from spacenit.evaluation.sliding import embed_scene

        if args.sensor_map:
            raise EmbedError("--sensor-map maps a dataset's sensors; a scene feeds one model sensor: pick it with --sensor")
        outputs = [args.output] + ([args.zarr] if args.zarr else [])
        result = embed_scene(args.model, source, outputs, bands=args.bands.split(",") if args.bands else None,
                             sensor=args.sensor, window_px=args.window_px, overlap_px=args.overlap_px,
                             batch_size=args.batch_size, month=args.month, output_gsd_m=args.output_gsd_m,
                             tracking_uri=args.tracking_uri, allow_missing_bands=args.allow_missing_bands)  # fmt: skip
        print(f"wrote {', '.join(map(str, result.outputs))}: {result.shape[0]} x {result.shape[1]} cells x {result.channels} "
              f"channels, {result.crs}, {result.windows} windows")  # fmt: skip
        return 0
    from spacenit.evaluation.embed import embed

    path = embed(args.model, source, args.output, batch_size=args.batch_size, tracking_uri=args.tracking_uri,
                 patch_maps=args.patch_maps, num_workers=args.workers, sensor_map=dict(args.sensor_map) or None,
                 allow_missing_bands=args.allow_missing_bands, pooling=args.pooling)  # fmt: skip
    print(f"wrote {path}")
    return 0


def _report(store, output: Path, tasks: list[str] | None, args: argparse.Namespace) -> None:
    from spacenit.evaluation.report import log_report, write_report

    path = write_report(store, output, tasks=tasks)
    print(f"wrote {path}")
    if not args.no_mlflow:
        run_id = log_report(store, path, tasks=tasks, tracking_uri=args.tracking_uri, experiment=args.mlflow_experiment)
        print(f"logged the report to MLflow run {run_id}")


def _evaluate(args: argparse.Namespace) -> int:
    from spacenit.evaluation.adapters import RawPixelAdapter, SpaceNitAdapter, build_adapter
    from spacenit.evaluation.benchmark import BenchmarkOptions, flat_metrics, run_benchmark
    from spacenit.evaluation.datasets import SEGMENTATION, load_task, transfer_task
    from spacenit.evaluation.errors import ProbeError
    from spacenit.evaluation.results import ResultsStore

    def task(name: str):
        return load_task(name, data_root=args.data_root, work_dir=args.work_dir)

    if bool(args.train) != bool(args.test):
        raise ProbeError("--train and --test go together: --train TASK --test OTHER_TASK")
    tasks = [task(name) for name in args.task]
    if args.train:
        train = task(args.train)
        tasks += [transfer_task(train, task(name)) for name in args.test]
    if not tasks:
        raise ProbeError("nothing to evaluate on: name a task (e.g. eurosat), or --train TASK --test OTHER_TASK")
    models = []
    for name, path in args.model:
        loaded = SpaceNitAdapter.from_checkpoint(path, name=name, tracking_uri=args.tracking_uri, sensor_map=args.sensor_map)
        for pooling in args.pooling.split(","):
            models.append(SpaceNitAdapter(loaded.model, loaded.meta, name=name if pooling == "mean" else f"{name}[{pooling}]",
                                          sensor_map=args.sensor_map, pooling=pooling))  # fmt: skip
    external = [build_adapter(b) for b in args.baseline if b not in ("random_init", "raw_pixels")]
    adapters = list(models) + external
    if "random_init" in args.baseline:
        adapters += [m.random_twin() for m in models + external]
    if "raw_pixels" in args.baseline:
        adapters.append(RawPixelAdapter())
    adapters += [build_adapter(spec) for spec in args.adapter]
    if not adapters:
        raise KeyError("nothing to evaluate: give --model NAME=CHECKPOINT, --baseline or --adapter")
    options = BenchmarkOptions(probes=args.probes.split(","), n_train=args.n_train,
                               seeds=[int(s) for s in args.seeds.split(",")], k=args.k)  # fmt: skip
    store, scored = ResultsStore(args.store), []
    for t in tasks:
        if t.kind == SEGMENTATION:
            print(f"{t.name}: a segmentation task (label rasters) at {t.dataset_dir}; its probes are the dense "
                  "task type's, not these classification probes: skipped", file=sys.stderr)  # fmt: skip
            continue
        results = run_benchmark(t, adapters, store=store, options=options, tracking_uri=args.tracking_uri,
                                experiment=args.mlflow_experiment, log_to_mlflow=not args.no_mlflow)  # fmt: skip
        scored.append(t.name)
        for r in results:
            k = r.key
            shown = {m: round(v, 3) for m, v in flat_metrics(r).items()}
            print(f"{k.task} {k.model} {k.probe} n_train={'all' if k.n_train == -1 else k.n_train} seed={k.seed}: {shown}")
        print(f"{t.name}: {len(results)} new result(s) in {args.store}")
    if not scored:
        raise ProbeError(f"no classification task among {[t.name for t in tasks]}: nothing for these probes to score")
    if args.report is not None:
        _report(store, args.report, scored, args)
    return 0

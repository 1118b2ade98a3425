"""The SpaceNit pipeline (convert -> stats -> pretrain -> embed -> probe) and its entry points.

    python -m pipelines.spacenit_pipeline compile [--output pipelines/spacenit_pipeline.yaml]
    python -m pipelines.spacenit_pipeline run-local --input-dir DIR --pipeline-root DIR \\
        --tracking-uri sqlite:///$PWD/mlflow.db [--steps N ...]

`compile` writes the pipeline spec to submit to Kubeflow Pipelines; `run-local`
runs every stage here, in this Python environment, with kfp.local.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
import argparse
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Metrics, Model

from components.convert import convert_op
from components.embed import embed_op
from components.pretrain import pretrain_op
from components.probe import probe_op
from components.stats import stats_op

PIPELINE_NAME = "spacenit"
DEFAULT_YAML = Path(__file__).with_name("spacenit_pipeline.yaml")


class Outputs(NamedTuple):
    """The pipeline's outputs; kfp.local returns them as the run's `outputs`."""

    dataset: Dataset
    stats: Artifact
    model: Model
    embeddings: Dataset
    metrics: Metrics
    probe_report: Artifact


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="GeoTIFFs -> shards -> stats -> pretraining -> embeddings -> probe metrics, tracked in MLflow.",
)
def spacenit_pipeline(
    input_dir: str,
    tracking_uri: str = "",
    experiment: str = "spacenit",
    tile_size_px: int = 64,
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    pretrain_overrides: list[str] = [],  # noqa: B006 (KFP copies the default into the spec)
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
    k: int = 20,
    seed: int = 0,
) -> Outputs:
    """`tracking_uri` empty: the steps use $MLFLOW_TRACKING_URI of their container."""
    convert_task = convert_op(
        input_dir=input_dir, layout=layout, sensor=sensor, tile_size_px=tile_size_px
    )
    convert_task.set_cpu_request("1").set_memory_request("2G")

    stats_task = stats_op(dataset=convert_task.outputs["dataset"])
    stats_task.set_cpu_request("1").set_memory_request("2G")

    pretrain_task = pretrain_op(
        dataset=convert_task.outputs["dataset"],
        stats=stats_task.outputs["stats"],
        steps=steps,
        global_batch_size=global_batch_size,
        model_preset=model_preset,
        seed=seed,
        overrides=pretrain_overrides,
        tracking_uri=tracking_uri,
        experiment=experiment,
        register_as=register_as,
        alias=alias,
    )
    # Training registers a new model version each run: never reuse a cached result.
    pretrain_task.set_caching_options(False)
    pretrain_task.set_cpu_request("4").set_memory_request("16G")

    embed_task = embed_op(
        model=pretrain_task.outputs["model"], dataset=convert_task.outputs["dataset"]
    )
    embed_task.set_cpu_request("2").set_memory_request("8G")

    probe_task = probe_op(
        embeddings=embed_task.outputs["embeddings"],
        k=k,
        seed=seed,
        tracking_uri=tracking_uri,
        experiment=experiment,
    )
    probe_task.set_cpu_request("1").set_memory_request("4G")

    return Outputs(
        dataset=convert_task.outputs["dataset"],
        stats=stats_task.outputs["stats"],
        model=pretrain_task.outputs["model"],
        embeddings=embed_task.outputs["embeddings"],
        metrics=probe_task.outputs["metrics"],
        probe_report=probe_task.outputs["report"],
    )


def compile_pipeline(output: str | Path = DEFAULT_YAML) -> Path:
    """Compile the pipeline to a YAML spec for Kubeflow Pipelines."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(spacenit_pipeline, str(output))
    return output


@dataclass
class LocalRunResult:
    """What a local run left behind."""

    #: The probe metrics (knn_accuracy, linear_accuracy, majority_accuracy, num_train, ...).
    metrics: dict[str, float]
    #: Output artifact paths under the pipeline root: dataset, stats, model (the
    #: checkpoint directory), embeddings (a Zarr group), probe_report (JSON).
    artifacts: dict[str, Path]
    #: Metadata of the model artifact: run_id, model_uri, version, final_loss, ...
    model_metadata: dict = field(default_factory=dict)


def run_local(
    input_dir: str | Path,
    pipeline_root: str | Path,
    tracking_uri: str,
    *,
    experiment: str = "spacenit",
    tile_size_px: int = 64,
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    pretrain_overrides: list[str] | tuple[str, ...] = (),
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
    k: int = 20,
    seed: int = 0,
) -> LocalRunResult:
    """Run the whole pipeline here with kfp.local; each step is a subprocess of this interpreter.

    Raises RuntimeError when a step fails (its log is printed above).
    """
    from kfp import local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    # SubprocessRunner runs each step with `sys.executable -m kfp.dsl.executor_main`
    # in the current environment (use_venv=False: no per-step venv, no installs).
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    with warnings.catch_warnings():
        # kfp.local warns for every step that our image name lacks "python"; here
        # the steps run in this environment, not in the image.
        warnings.filterwarnings(
            "ignore", message=".*non-Python base image", category=RuntimeWarning
        )
        # ... and that resource requests are ignored locally.
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
        task = spacenit_pipeline(
            input_dir=str(Path(input_dir).resolve()),
            tracking_uri=tracking_uri,
            experiment=experiment,
            tile_size_px=tile_size_px,
            layout=layout,
            sensor=sensor,
            steps=steps,
            global_batch_size=global_batch_size,
            model_preset=model_preset,
            pretrain_overrides=list(pretrain_overrides),
            register_as=register_as,
            alias=alias,
            k=k,
            seed=seed,
        )
    outputs = task.outputs
    return LocalRunResult(
        metrics=dict(outputs["metrics"].metadata),
        artifacts={
            name: Path(outputs[name].path)
            for name in ("dataset", "stats", "model", "embeddings", "probe_report")
        },
        model_metadata=dict(outputs["model"].metadata),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.spacenit_pipeline",
        description="Compile the SpaceNit Kubeflow pipeline, or run it locally with kfp.local.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write the pipeline YAML for Kubeflow Pipelines")
    c.add_argument(
        "--output", type=Path, default=DEFAULT_YAML, help="YAML to write (default: %(default)s)"
    )

    r = sub.add_parser(
        "run-local",
        help="run the whole pipeline in this environment (kfp.local SubprocessRunner)",
        epilog="example: python -m pipelines.spacenit_pipeline run-local --input-dir demo/geotiffs "
        "--pipeline-root demo/kfp --tracking-uri sqlite:///$PWD/demo/mlflow.db --steps 20 --tile-size-px 32",
    )
    r.add_argument("--input-dir", type=Path, required=True, help="directory of GeoTIFFs")
    r.add_argument(
        "--pipeline-root", type=Path, required=True, help="where the steps' artifacts are written"
    )
    r.add_argument(
        "--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///$PWD/mlflow.db"
    )
    r.add_argument("--experiment", default="spacenit")
    r.add_argument("--tile-size-px", type=int, default=64)
    r.add_argument("--layout", default="auto", choices=["auto", "samples", "class_folders"])
    r.add_argument("--sensor", default="sentinel2_l1c")
    r.add_argument("--steps", type=int, default=200)
    r.add_argument("--global-batch-size", type=int, default=16)
    r.add_argument(
        "--model",
        dest="model_preset",
        default="spacenit_nano",
        help="model preset (default: %(default)s)",
    )
    r.add_argument("--set", dest="pretrain_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra pretrain config override, e.g. --set train.lr=5e-4 (repeatable)")  # fmt: skip
    r.add_argument(
        "--register-as", default="spacenit-encoder", help="registered model name ('' to skip)"
    )
    r.add_argument("--alias", default="champion")
    r.add_argument("-k", type=int, default=20, help="neighbours for the kNN probe")
    r.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compile":
        print(f"wrote {compile_pipeline(args.output)}")
        return 0
    options = vars(args)
    options.pop("command")
    result = run_local(**options)
    print("\nartifacts:")
    for name, path in result.artifacts.items():
        print(f"  {name}: {path}")
    print(
        f"model: {result.model_metadata.get('model_uri')} (mlflow run {result.model_metadata.get('run_id')})"
    )
    print("probe metrics:")
    print(json.dumps(result.metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

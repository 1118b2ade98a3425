"""The SpaceNit pipeline (convert -> stats -> pretrain -> embed -> probe) and its entry points.

    python -m pipelines.spacenit_pipeline compile [--output pipelines/spacenit_pipeline.yaml]
    python -m pipelines.spacenit_pipeline run-local --input-dir DIR --pipeline-root DIR \\
        --tracking-uri sqlite:///$PWD/mlflow.db [--steps N ...]
    python -m pipelines.spacenit_pipeline submit --host URL --input-dir /data/raw [...]

`compile` writes the pipeline spec to submit to Kubeflow Pipelines; `run-local`
runs every stage here, in this Python environment, with kfp.local (Kubernetes
settings are ignored there); `submit` starts a run on a Kubeflow Pipelines
server.

The DAG, inside an exit handler that closes the pipeline's MLflow run:

    start-run, fingerprint-input, partition-indices -> ParallelFor(convert) -> merge -> stats
        -> one of: pretrain (CPU) | pretrain on N GPUs (CUDA image) | pretrain-multinode (PyTorchJob)
        -> evaluate: embed -> probe

`fingerprint-input` hashes the file list under `input_dir` (paths, sizes, mtimes) and
feeds it to convert, so convert's cache key changes when the input does.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
import argparse
import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Model
from kfp.dsl.pipeline_channel import PipelineChannel

from components.convert import convert_op, partition_indices_op
from components.embed import embed_op
from components.fingerprint import fingerprint_input_op
from components.image import IMAGE_CUDA
from components.merge import merge_op
from components.mlflow_run import end_run_op, start_run_op
from components.pretrain import pretrain_op
from components.pretrain_multinode import DATA_MOUNT, TEMPLATE_MOUNT, pretrain_multinode_op
from components.probe import probe_op
from components.stats import stats_op

PIPELINE_NAME = "spacenit"
DEFAULT_YAML = Path(__file__).with_name("spacenit_pipeline.yaml")

# Names of the Kubernetes objects the pipeline uses; manifests/base creates them.
DATA_PVC = "spacenit-data"
#: MLFLOW_TRACKING_URI (+ MLFLOW_TRACKING_USERNAME/PASSWORD when the server wants them).
MLFLOW_SECRET = "spacenit-mlflow-client"
MLFLOW_SECRET_KEYS = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
#: S3-compatible object store: only needed where MLflow does not proxy artifacts.
OBJECT_STORE_SECRET = "spacenit-object-store"
OBJECT_STORE_KEYS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"]
TRAINING_TEMPLATE_CONFIGMAP = "spacenit-training-template"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

#: The trial cluster of docs/deploy.md (one kind or minikube node), and what of it Kubernetes'
#: own pods, Kubeflow Pipelines and the dev overlay's MLflow + PostgreSQL take: the default
#: requests of the steps that run at once must fit in the rest.
TRIAL_NODE = {"cpu": "4", "memory": "8Gi"}
TRIAL_NODE_RESERVED = {"cpu": "2500m", "memory": "5Gi"}
#: Default requests and limits (cpu request, cpu limit, memory request, memory limit) of
#: each group of steps, each a pipeline parameter `<group>_{cpu,memory}_{request,limit}`.
#: Sized so that a run schedules on the trial cluster of docs/deploy.md (one node, 4 CPU,
#: 8 GiB, beside Kubeflow Pipelines and MLflow), `convert_partitions` = 4 converts at once
#: included; `gpu_pretrain` is for GPU nodes. tests/test_pipeline.py checks the sums.
RESOURCES = {
    # start-run, end-run, partition-indices, fingerprint, and the step that submits a PyTorchJob
    "control": ("100m", "500m", "256Mi", "1Gi"),
    "convert": ("250m", "1", "512Mi", "2Gi"),
    "merge": ("250m", "1", "512Mi", "2Gi"),
    "stats": ("250m", "1", "512Mi", "2Gi"),
    "pretrain": ("1", "2", "2Gi", "4Gi"),
    "gpu_pretrain": ("4", "8", "16Gi", "32Gi"),
    "embed": ("500m", "2", "1Gi", "4Gi"),
    "probe": ("250m", "1", "512Mi", "2Gi"),
}


def _sized(
    task: dsl.PipelineTask, cpu_request, cpu_limit, memory_request, memory_limit
) -> dsl.PipelineTask:
    """Requests and limits from pipeline parameters (limits too: a step never takes the whole node).

    The parameters are registered as the task's inputs: kfp 2.17 does not pass a parameter
    used only in a resource setting into a dsl.If or ParallelFor sub-DAG otherwise
    (tests/test_pipeline.py::test_reference_check_catches_a_parameter_lost_in_a_branch).
    """
    sizes = (cpu_request, cpu_limit, memory_request, memory_limit)
    task.register_pipeline_channels([s for s in sizes if isinstance(s, PipelineChannel)])
    return (
        task.set_cpu_request(cpu_request)
        .set_cpu_limit(cpu_limit)
        .set_memory_request(memory_request)
        .set_memory_limit(memory_limit)
    )


def _with_mlflow_secrets(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Credentials as env from Kubernetes secrets.

    Optional for the pod to start; a step that needs MLflow and finds no tracking URI
    fails with a message naming the Secret (spacenit/train/tracking.py).
    """
    kubernetes.use_secret_as_env(
        task, MLFLOW_SECRET, {k: k for k in MLFLOW_SECRET_KEYS}, optional=True
    )
    kubernetes.use_secret_as_env(
        task, OBJECT_STORE_SECRET, {k: k for k in OBJECT_STORE_KEYS}, optional=True
    )
    return task


def _io_retries(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Reads and writes of volumes, the artifact store and MLflow: retry with backoff."""
    return task.set_retry(
        3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s"
    )


@dsl.pipeline(name="evaluate", description="embed -> probe, for one trained encoder.")
def evaluate(
    model: Model,
    dataset: Dataset,
    k: int,
    probe_test_fraction: float,
    seed: int,
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    embed_cpu_request: str,
    embed_cpu_limit: str,
    embed_memory_request: str,
    embed_memory_limit: str,
    probe_cpu_request: str,
    probe_cpu_limit: str,
    probe_memory_request: str,
    probe_memory_limit: str,
):
    embed_task = embed_op(model=model, dataset=dataset)
    _sized(embed_task, embed_cpu_request, embed_cpu_limit, embed_memory_request, embed_memory_limit)
    _io_retries(embed_task)

    probe_task = probe_op(
        embeddings=embed_task.outputs["embeddings"],
        k=k,
        seed=seed,
        test_fraction=probe_test_fraction,
        tracking_uri=tracking_uri,
        experiment=experiment,
        parent_run_id=parent_run_id,
    )
    # It logs a run under this pipeline run: a cached result would log nothing.
    probe_task.set_caching_options(False)
    _sized(probe_task, probe_cpu_request, probe_cpu_limit, probe_memory_request, probe_memory_limit)
    _with_mlflow_secrets(_io_retries(probe_task))


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="GeoTIFFs -> shards -> stats -> pretraining -> embeddings -> probe metrics, tracked in MLflow.",
)
def spacenit_pipeline(
    input_dir: str,
    tracking_uri: str = "",
    experiment: str = PIPELINE_NAME,
    convert_partitions: int = 4,
    tile_size_px: int = 0,
    tile_scenes: bool = False,
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    pretrain_overrides: list[str] = [],  # noqa: B006 (KFP copies the default into the spec)
    gpus_per_node: int = 0,
    num_nodes: int = 1,
    gpu_node_selector: dict = {},  # noqa: B006
    data_pvc: str = DATA_PVC,
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
    k: int = 20,
    probe_test_fraction: float = 0.3,
    seed: int = 0,
    control_cpu_request: str = RESOURCES["control"][0],
    control_cpu_limit: str = RESOURCES["control"][1],
    control_memory_request: str = RESOURCES["control"][2],
    control_memory_limit: str = RESOURCES["control"][3],
    convert_cpu_request: str = RESOURCES["convert"][0],
    convert_cpu_limit: str = RESOURCES["convert"][1],
    convert_memory_request: str = RESOURCES["convert"][2],
    convert_memory_limit: str = RESOURCES["convert"][3],
    merge_cpu_request: str = RESOURCES["merge"][0],
    merge_cpu_limit: str = RESOURCES["merge"][1],
    merge_memory_request: str = RESOURCES["merge"][2],
    merge_memory_limit: str = RESOURCES["merge"][3],
    stats_cpu_request: str = RESOURCES["stats"][0],
    stats_cpu_limit: str = RESOURCES["stats"][1],
    stats_memory_request: str = RESOURCES["stats"][2],
    stats_memory_limit: str = RESOURCES["stats"][3],
    pretrain_cpu_request: str = RESOURCES["pretrain"][0],
    pretrain_cpu_limit: str = RESOURCES["pretrain"][1],
    pretrain_memory_request: str = RESOURCES["pretrain"][2],
    pretrain_memory_limit: str = RESOURCES["pretrain"][3],
    gpu_pretrain_cpu_request: str = RESOURCES["gpu_pretrain"][0],
    gpu_pretrain_cpu_limit: str = RESOURCES["gpu_pretrain"][1],
    gpu_pretrain_memory_request: str = RESOURCES["gpu_pretrain"][2],
    gpu_pretrain_memory_limit: str = RESOURCES["gpu_pretrain"][3],
    embed_cpu_request: str = RESOURCES["embed"][0],
    embed_cpu_limit: str = RESOURCES["embed"][1],
    embed_memory_request: str = RESOURCES["embed"][2],
    embed_memory_limit: str = RESOURCES["embed"][3],
    probe_cpu_request: str = RESOURCES["probe"][0],
    probe_cpu_limit: str = RESOURCES["probe"][1],
    probe_memory_request: str = RESOURCES["probe"][2],
    probe_memory_limit: str = RESOURCES["probe"][3],
):
    """Every knob is a parameter; credentials come from Kubernetes secrets, never from here.

    `input_dir` is a directory of GeoTIFFs on the shared data PVC `data_pvc`, which
    the fingerprint and convert steps mount at /data. `experiment` is the MLflow
    experiment (one per pipeline by default); an empty `tracking_uri` means
    $MLFLOW_TRACKING_URI of the steps (from the `spacenit-mlflow-client` secret; a
    step that needs MLflow fails without one). `gpus_per_node` = 0 trains on CPU; > 0
    trains in the CUDA image with `accelerate launch` on that many GPUs; with
    `num_nodes` > 1 a PyTorchJob trains on num_nodes x gpus_per_node GPUs.
    `gpu_node_selector` (e.g. {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    picks the GPU nodes. `tile_scenes` splits rasters larger than one tile into one
    sample per tile (see docs/format.md). `<group>_{cpu,memory}_{request,limit}` size
    the steps (see RESOURCES).
    """
    control = dict(cpu_request=control_cpu_request, cpu_limit=control_cpu_limit,
                   memory_request=control_memory_request, memory_limit=control_memory_limit)  # fmt: skip
    end_task = end_run_op(
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, tracking_uri=tracking_uri, experiment=experiment
    )
    end_task.set_caching_options(False)
    _sized(end_task, **control)
    _with_mlflow_secrets(_io_retries(end_task))
    with dsl.ExitHandler(end_task, name="tracked-run"):
        run_task = start_run_op(
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            tracking_uri=tracking_uri,
            experiment=experiment,
            input_dir=input_dir,
            model_preset=model_preset,
            steps=steps,
            global_batch_size=global_batch_size,
            gpus_per_node=gpus_per_node,
            num_nodes=num_nodes,
            convert_partitions=convert_partitions,
            seed=seed,
            pretrain_overrides=pretrain_overrides,
        )
        run_task.set_caching_options(False)  # one MLflow run per pipeline run
        _sized(run_task, **control)
        _with_mlflow_secrets(_io_retries(run_task))
        parent_run_id = run_task.output

        # What the input holds now: convert's cache key follows it. Never cached itself.
        fingerprint_task = fingerprint_input_op(input_dir=input_dir)
        fingerprint_task.set_caching_options(False)
        _sized(fingerprint_task, **control)
        kubernetes.mount_pvc(fingerprint_task, pvc_name=data_pvc, mount_path=DATA_MOUNT)
        _io_retries(fingerprint_task)

        # convert, fanned out over partitions of the input, then merged: pure, cached.
        indices_task = partition_indices_op(count=convert_partitions)
        _sized(indices_task, **control)
        with dsl.ParallelFor(indices_task.output, name="convert-partitions") as index:
            convert_task = convert_op(
                input_dir=input_dir,
                input_fingerprint=fingerprint_task.output,
                layout=layout,
                sensor=sensor,
                tile_size_px=tile_size_px,
                tile_scenes=tile_scenes,
                partition_index=index,
                partition_count=convert_partitions,
            )
            _sized(convert_task, convert_cpu_request, convert_cpu_limit, convert_memory_request, convert_memory_limit)  # fmt: skip
            kubernetes.mount_pvc(convert_task, pvc_name=data_pvc, mount_path=DATA_MOUNT)
            _io_retries(convert_task)
        merge_task = merge_op(parts=dsl.Collected(convert_task.outputs["dataset"]))
        _sized(
            merge_task, merge_cpu_request, merge_cpu_limit, merge_memory_request, merge_memory_limit
        )
        _io_retries(merge_task)
        dataset = merge_task.outputs["dataset"]

        stats_task = stats_op(dataset=dataset)
        _sized(
            stats_task, stats_cpu_request, stats_cpu_limit, stats_memory_request, stats_memory_limit
        )
        _io_retries(stats_task)

        train_args = dict(
            dataset=dataset,
            stats=stats_task.outputs["stats"],
            steps=steps,
            global_batch_size=global_batch_size,
            model_preset=model_preset,
            seed=seed,
            overrides=pretrain_overrides,
            tracking_uri=tracking_uri,
            experiment=experiment,
            parent_run_id=parent_run_id,
            register_as=register_as,
            alias=alias,
        )
        eval_args = dict(
            dataset=dataset,
            k=k,
            probe_test_fraction=probe_test_fraction,
            seed=seed,
            tracking_uri=tracking_uri,
            experiment=experiment,
            parent_run_id=parent_run_id,
            embed_cpu_request=embed_cpu_request,
            embed_cpu_limit=embed_cpu_limit,
            embed_memory_request=embed_memory_request,
            embed_memory_limit=embed_memory_limit,
            probe_cpu_request=probe_cpu_request,
            probe_cpu_limit=probe_cpu_limit,
            probe_memory_request=probe_memory_request,
            probe_memory_limit=probe_memory_limit,
        )
        # Training registers a new model version each run: never served from the cache,
        # never retried by KFP (accelerate and the PyTorchJob handle their own failures).
        # Each branch evaluates its own model: kfp.local cannot yet join artifacts of
        # branches with dsl.OneOf.
        with dsl.If(num_nodes > 1, name="multi-node"):
            # This step only stages data and watches the job: a control step's resources.
            job_task = pretrain_multinode_op(num_nodes=num_nodes, gpus_per_node=gpus_per_node, data_pvc=data_pvc, image=IMAGE_CUDA, **train_args)  # fmt: skip
            job_task.set_caching_options(False)
            _sized(job_task, **control)
            kubernetes.mount_pvc(job_task, pvc_name=data_pvc, mount_path=DATA_MOUNT)
            kubernetes.use_config_map_as_volume(
                job_task, TRAINING_TEMPLATE_CONFIGMAP, mount_path=TEMPLATE_MOUNT
            )
            evaluate(model=job_task.outputs["model"], **eval_args)
        with dsl.Elif(gpus_per_node > 0, name="gpus"):
            gpu_task = pretrain_op(gpus_per_node=gpus_per_node, **train_args)
            gpu_task.set_caching_options(False)
            gpu_task.set_container_image(IMAGE_CUDA)
            gpu_task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus_per_node)
            _sized(gpu_task, gpu_pretrain_cpu_request, gpu_pretrain_cpu_limit, gpu_pretrain_memory_request, gpu_pretrain_memory_limit)  # fmt: skip
            kubernetes.add_toleration_json(gpu_task, GPU_TOLERATION)
            kubernetes.add_node_selector_json(gpu_task, gpu_node_selector)
            # accelerate's workers exchange tensors through /dev/shm (64 MiB by default).
            kubernetes.empty_dir_mount(
                gpu_task, "dshm", "/dev/shm", medium="Memory", size_limit="16Gi"
            )
            _with_mlflow_secrets(gpu_task)
            evaluate(model=gpu_task.outputs["model"], **eval_args)
        with dsl.Else(name="cpu"):
            cpu_task = pretrain_op(gpus_per_node=0, **train_args)
            cpu_task.set_caching_options(False)
            _sized(cpu_task, pretrain_cpu_request, pretrain_cpu_limit, pretrain_memory_request, pretrain_memory_limit)  # fmt: skip
            _with_mlflow_secrets(cpu_task)
            evaluate(model=cpu_task.outputs["model"], **eval_args)


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
    #: Output artifact paths under the pipeline root: dataset (merged), stats, model (the
    #: pretrain output dir, with checkpoint/), embeddings (a Zarr group), probe_report (JSON).
    artifacts: dict[str, Path]
    #: Metadata of the model artifact: run_id, model_uri, version, final_loss, ...
    model_metadata: dict = field(default_factory=dict)
    #: The MLflow run id of the pipeline run (the parent of the stage runs).
    parent_run_id: str = ""
    #: The local run's directory under the pipeline root.
    run_dir: Path | None = None


# (task, output) of each result artifact. The pipeline has no outputs (they cannot
# leave its exit handler), so a local run reads them from the steps' executor outputs.
_LOCAL_ARTIFACTS = {
    "dataset": ("merge", "dataset"),
    "stats": ("stats", "stats"),
    "model": ("pretrain", "model"),
    "embeddings": ("embed", "embeddings"),
    "probe_report": ("probe", "report"),
    "metrics": ("probe", "metrics"),
}


def _executor_outputs(run_dir: Path) -> dict[str, dict]:
    """Task name -> its executor_output.json, for every step of a kfp.local run.

    kfp.local writes each step's outputs to <pipeline root>/<run>/[<loop>/]<task>/. A
    component used twice in the DAG has tasks `name` and `name-2`; only one ran.
    """
    outputs = {}
    for path in sorted(run_dir.rglob("executor_output.json")):
        outputs[re.sub(r"-\d+$", "", path.parent.name)] = json.loads(path.read_text())
    return outputs


def _local_result(run_dir: Path) -> LocalRunResult:
    outputs = _executor_outputs(run_dir)
    found = {}
    for name, (task, key) in _LOCAL_ARTIFACTS.items():
        try:
            (artifact,) = outputs[task]["artifacts"][key]["artifacts"]
        except KeyError as e:
            raise RuntimeError(
                f"{run_dir}: no output {key!r} of step {task!r} (steps: {sorted(outputs)})"
            ) from e
        found[name] = artifact
    return LocalRunResult(
        metrics=dict(found.pop("metrics")["metadata"]),
        artifacts={name: Path(a["uri"]) for name, a in found.items()},
        model_metadata=dict(found["model"]["metadata"]),
        parent_run_id=outputs["start-run"]["parameterValues"]["Output"],
        run_dir=run_dir,
    )


def run_local(
    input_dir: str | Path,
    pipeline_root: str | Path,
    tracking_uri: str,
    *,
    experiment: str = PIPELINE_NAME,
    convert_partitions: int = 2,
    tile_size_px: int = 0,
    tile_scenes: bool = False,
    layout: str = "auto",
    sensor: str = "sentinel2_l1c",
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    pretrain_overrides: list[str] | tuple[str, ...] = (),
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
    k: int = 20,
    probe_test_fraction: float = 0.3,
    seed: int = 0,
) -> LocalRunResult:
    """Run the whole pipeline here with kfp.local, on CPU; each step is a subprocess of this interpreter.

    Raises RuntimeError when a step fails (its log is printed above).
    """
    from kfp import local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
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
        # ... and that resource requests, retries and Kubernetes settings are ignored locally.
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
        warnings.filterwarnings("ignore", message=".*not supported by the local runner")
        spacenit_pipeline(
            input_dir=str(Path(input_dir).resolve()),
            tracking_uri=tracking_uri,
            experiment=experiment,
            convert_partitions=convert_partitions,
            tile_size_px=tile_size_px,
            tile_scenes=tile_scenes,
            layout=layout,
            sensor=sensor,
            steps=steps,
            global_batch_size=global_batch_size,
            model_preset=model_preset,
            pretrain_overrides=list(pretrain_overrides),
            register_as=register_as,
            alias=alias,
            k=k,
            probe_test_fraction=probe_test_fraction,
            seed=seed,
        )
    (run_dir,) = [
        p for p in set(pipeline_root.iterdir()) - before if p.name.startswith(f"{PIPELINE_NAME}-")
    ]
    return _local_result(run_dir)


def submit(
    host: str,
    arguments: dict,
    *,
    package: str | Path = DEFAULT_YAML,
    experiment: str = PIPELINE_NAME,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str = "spacenit-pipeline",
    existing_token: str | None = None,
    no_cache: bool = False,
):
    """Start a run of the compiled pipeline on a Kubeflow Pipelines server; returns kfp's RunPipelineResult.

    `no_cache` runs every step afresh (KFP's cache is skipped for this run).
    """
    import kfp

    client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=existing_token)
    return client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        service_account=service_account,
        # None keeps each step's compiled caching option; False turns the cache off.
        enable_caching=False if no_cache else None,
    )


def _param(text: str) -> tuple[str, object]:
    """`name=value` of `submit --param`; the value is parsed as JSON when it is JSON."""
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.spacenit_pipeline",
        description="Compile the SpaceNit Kubeflow pipeline, run it locally with kfp.local, or submit a run.",
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
        "--pipeline-root demo/kfp --tracking-uri sqlite:///$PWD/demo/mlflow.db --steps 20 --tile-size-px 48",
    )
    r.add_argument("--input-dir", type=Path, required=True, help="directory of GeoTIFFs")
    r.add_argument(
        "--pipeline-root", type=Path, required=True, help="where the steps' artifacts are written"
    )
    r.add_argument(
        "--tracking-uri",
        required=True,
        help="MLflow tracking URI, e.g. sqlite:///$PWD/mlflow.db or http://127.0.0.1:5000",
    )
    r.add_argument("--experiment", default=PIPELINE_NAME)
    r.add_argument(
        "--convert-partitions", type=int, default=2, help="convert fan-out (default: %(default)s)"
    )
    r.add_argument("--tile-size-px", type=int, default=0,
                   help="tile side in pixels of the finest grid; 0 (default): picked from the data")
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
    r.add_argument("--probe-test-fraction", type=float, default=0.3)
    r.add_argument("--seed", type=int, default=0)

    s = sub.add_parser(
        "submit",
        help="start a run of the compiled pipeline on a Kubeflow Pipelines server",
        epilog="example: python -m pipelines.spacenit_pipeline submit --host http://localhost:8080 "
        "--param input_dir=/data/raw --param gpus_per_node=1",
    )
    s.add_argument(
        "--host", required=True, help="Kubeflow Pipelines API, e.g. http://localhost:8080"
    )
    s.add_argument(
        "--package",
        type=Path,
        default=DEFAULT_YAML,
        help="compiled pipeline (default: %(default)s)",
    )
    s.add_argument("--param", dest="params", action="append", type=_param, default=[], metavar="NAME=VALUE",
                   help="pipeline parameter (repeatable); JSON values are parsed, e.g. gpu_node_selector='{\"a\": \"b\"}'")  # fmt: skip
    s.add_argument(
        "--experiment", default=PIPELINE_NAME, help="KFP experiment (default: %(default)s)"
    )
    s.add_argument("--run-name", default=None)
    s.add_argument(
        "--namespace", default=None, help="the Kubeflow profile namespace (multi-user installs)"
    )
    s.add_argument(
        "--service-account", default="spacenit-pipeline", help="runs as (default: %(default)s)"
    )
    s.add_argument(
        "--token",
        dest="existing_token",
        default=None,
        help="bearer token for the KFP API, if it wants one",
    )
    s.add_argument(
        "--no-cache",
        action="store_true",
        help="run every step, even those whose inputs match a cached execution",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compile":
        print(f"wrote {compile_pipeline(args.output)}")
        return 0
    options = vars(args)
    command = options.pop("command")
    if command == "submit":
        result = submit(options.pop("host"), dict(options.pop("params")), **options)
        print(f"run {result.run_id} started")
        return 0
    result = run_local(**options)
    print("\nartifacts:")
    for name, path in result.artifacts.items():
        print(f"  {name}: {path}")
    print(f"mlflow pipeline run: {result.parent_run_id}")
    print(
        f"model: {result.model_metadata.get('model_uri')} (mlflow run {result.model_metadata.get('run_id')})"
    )
    print("probe metrics:")
    print(json.dumps(result.metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The KFP pipeline: its compiled DAG and Kubernetes settings, the multi-node step, and a real local run (kfp.local)."""

# No `from __future__ import annotations`: a test defines a KFP component, whose annotations KFP reads as types.
import importlib
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.image import IMAGE, IMAGE_CUDA

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = REPO / "pipelines" / "spacenit_pipeline.yaml"
TEMPLATE = REPO / "manifests" / "base" / "training" / "pytorchjob.yaml"
#: Every user-facing knob of the pipeline.
PARAMETERS = [
    "input_dir", "tracking_uri", "experiment", "convert_partitions", "tile_size_px", "layout", "sensor",
    "steps", "global_batch_size", "model_preset", "pretrain_overrides", "gpus_per_node", "num_nodes",
    "gpu_node_selector", "data_pvc", "register_as",
    "alias", "k", "probe_test_fraction", "seed",
]  # fmt: skip
#: Groups of steps sized by the parameters <group>_{cpu,memory}_{request,limit}.
RESOURCE_GROUPS = [
    "control",
    "convert",
    "merge",
    "stats",
    "pretrain",
    "gpu_pretrain",
    "embed",
    "probe",
]
RESOURCE_PARAMETERS = [
    f"{group}_{kind}_{bound}"
    for group in RESOURCE_GROUPS
    for kind in ("cpu", "memory")
    for bound in ("request", "limit")
]


@pytest.fixture(scope="module")
def pipeline_module():
    """`pipelines.spacenit_pipeline`, imported as `python -m` does: the repo root on sys.path."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("pipelines.spacenit_pipeline")


@pytest.fixture(scope="module")
def compiled(pipeline_module, tmp_path_factory) -> tuple[str, dict, dict]:
    """(text, pipeline spec, Kubernetes platform spec) of a fresh compile."""
    out = pipeline_module.compile_pipeline(
        tmp_path_factory.mktemp("compiled") / "spacenit_pipeline.yaml"
    )
    text = out.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _dags(spec: dict) -> dict[str, dict]:
    """Every DAG of the spec by component name ('root' for the pipeline's own)."""
    dags = {"root": spec["root"]["dag"]["tasks"]}
    dags.update({name: c["dag"]["tasks"] for name, c in spec["components"].items() if "dag" in c})
    return dags


def _tasks(spec: dict) -> dict[str, dict]:
    """Every container task by its executor label (component names are unique per executor)."""
    out = {}
    for tasks in _dags(spec).values():
        for task in tasks.values():
            component = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" in component:
                out[component["executorLabel"]] = task
    return out


def _dependencies(task: dict) -> set[str]:
    producers = {
        a["taskOutputArtifact"]["producerTask"]
        for a in task.get("inputs", {}).get("artifacts", {}).values()
        if "taskOutputArtifact" in a
    }
    return set(task.get("dependentTasks", [])) | producers


def test_compiled_yaml_is_current(compiled):
    text, _, _ = compiled
    assert CHECKED_IN.read_text() == text, (
        "pipelines/spacenit_pipeline.yaml is stale; run `make compile` "
        "(python -m pipelines.spacenit_pipeline compile)"
    )


def test_dag(compiled):
    _, spec, _ = compiled
    assert spec["pipelineInfo"]["name"] == "spacenit"
    dags = _dags(spec)
    # The exit handler closes the MLflow run whatever happened inside it.
    root = dags["root"]
    assert set(root) == {"end-run", "exit-handler-1"}
    assert root["end-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert (
        root["end-run"]["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"]
        == "exit-handler-1"
    )

    body = dags["comp-exit-handler-1"]
    loop = next(name for name in body if name.startswith("for-loop"))
    branches = next(name for name in body if name.startswith("condition-branches"))
    assert set(body) == {
        "start-run", "fingerprint-input", "partition-indices", loop, "merge", "stats", branches,
    }  # fmt: skip
    assert body[loop]["parameterIterator"]["items"]["inputParameter"].endswith(
        "partition-indices-Output"
    )
    assert set(dags[f"comp-{loop}"]) == {"convert"}
    # convert's cache key includes the fingerprint of the input directory.
    assert "fingerprint-input" in _dependencies(body[loop])
    fingerprint = dags[f"comp-{loop}"]["convert"]["inputs"]["parameters"]["input_fingerprint"]
    channel = fingerprint["componentInputParameter"]
    assert body[loop]["inputs"]["parameters"][channel]["taskOutputParameter"] == {
        "producerTask": "fingerprint-input", "outputParameterKey": "Output",
    }  # fmt: skip
    assert _dependencies(body["merge"]) == {loop}
    # merge collects the partitions' datasets from the loop (dsl.Collected).
    parts = body["merge"]["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]
    assert parts == {"producerTask": loop, "outputArtifactKey": "pipelinechannel--convert-dataset"}
    assert _dependencies(body["stats"]) == {"merge"}

    # One pretraining branch runs: multi-node, GPUs on one node, or CPU; each evaluates its model.
    conditions = {
        name: t["triggerPolicy"]["condition"] for name, t in dags[f"comp-{branches}"].items()
    }
    by_kind = {}
    for name, condition in conditions.items():
        trainers = {t for t in dags[f"comp-{name}"] if t.startswith("pretrain")}
        evaluators = {t for t in dags[f"comp-{name}"] if t.startswith("evaluate")}
        assert len(trainers) == 1 == len(evaluators), name
        by_kind[next(iter(trainers))] = condition
    multi = by_kind.pop("pretrain-multinode")
    assert "num_nodes']) > 1" in multi and "!" not in multi
    gpu, cpu = sorted(by_kind.values(), key=len)
    assert (
        "gpus_per_node']) > 0" in gpu
        and "!(int(inputs.parameter_values['pipelinechannel--gpus_per_node']) > 0)" in cpu
    )
    for name in ("comp-evaluate", "comp-evaluate-2", "comp-evaluate-3"):
        assert set(dags[name]) == {"embed", "probe"}
        assert _dependencies(dags[name]["probe"]) == {"embed"}

    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(PARAMETERS + RESOURCE_PARAMETERS) <= set(params)
    # Credentials never travel as parameters.
    for name in params:
        assert not any(word in name for word in ("password", "secret", "token", "access_key")), name


def unresolved_references(spec: dict) -> list[str]:
    """Task inputs taken from their DAG's inputs that the DAG does not declare."""
    components = {"root": spec["root"], **spec["components"]}
    problems = []
    for name, tasks in _dags(spec).items():
        declared = components[name].get("inputDefinitions", {})
        for task_name, task in tasks.items():
            for kind in ("parameters", "artifacts"):
                for key, value in task.get("inputs", {}).get(kind, {}).items():
                    ref = value.get("componentInputParameter") or value.get(
                        "componentInputArtifact"
                    )
                    if ref and ref not in declared.get(kind, {}):
                        problems.append(f"{name}/{task_name}.{key} -> {ref}")
    return problems


def test_every_reference_resolves(compiled):
    _, spec, _ = compiled
    assert unresolved_references(spec) == []


def test_reference_check_catches_a_parameter_lost_in_a_branch(tmp_path):
    """kfp 2.17 compiles a parameter used only in a resource request inside dsl.If into a dangling reference."""
    from kfp import compiler, dsl

    @dsl.component(base_image=IMAGE, install_kfp_package=False)
    def step(n: int):
        pass

    @dsl.pipeline(name="lost")
    def lost(n: int = 1, memory: str = "1G"):
        with dsl.If(n > 0):
            step(n=n).set_memory_request(memory)

    compiler.Compiler().compile(lost, str(tmp_path / "lost.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "lost.yaml").read_text()))
    assert any("pipelinechannel--memory" in p for p in unresolved_references(spec))


def test_images_resources_caching_retries(compiled, pipeline_module):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    tasks = _tasks(spec)
    gpu_exec = next(
        label for label, e in executors.items()
        if "accelerator" in e["container"].get("resources", {})
    )  # fmt: skip
    for label, executor in executors.items():
        container = executor["container"]
        expected = IMAGE_CUDA if label == gpu_exec else IMAGE
        assert container["image"] == expected, label
        assert "pip install" not in json.dumps(container), label
        # Every step's requests and limits are pipeline parameters.
        resources = container["resources"]
        for field in ("CpuRequest", "CpuLimit", "MemoryRequest", "MemoryLimit"):
            assert "pipelinechannel--" in resources[f"resource{field}"], (label, field)
    accelerator = executors[gpu_exec]["container"]["resources"]["accelerator"]
    assert "gpus_per_node" in accelerator["resourceCount"]
    assert accelerator["resourceType"] == pipeline_module.GPU_RESOURCE

    def stage(label: str) -> str:
        return label.removeprefix("exec-").rstrip("-0123456789")

    never_cached = {"start-run", "end-run", "fingerprint-input", "pretrain", "pretrain-multinode", "probe"}  # fmt: skip
    no_retry = {"pretrain", "pretrain-multinode", "partition-indices"}
    for label, task in tasks.items():
        name = stage(label)
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name not in never_cached), f"{label}: caching {cached}"
        retry = task.get("retryPolicy")
        if name in no_retry:
            assert retry is None, label
        else:
            assert (
                retry["maxRetryCount"] >= 2
                and retry["backoffDuration"]
                and retry["backoffFactor"] > 1
            ), label


def test_kubernetes_settings(compiled, pipeline_module):
    _, spec, k8s = compiled
    executors = spec["deploymentSpec"]["executors"]
    gpu_exec = next(
        label
        for label, e in executors.items()
        if "accelerator" in e["container"].get("resources", {})
    )
    # Convert reads the inputs, and the multi-node step stages data, on the shared PVC.
    for label in ("exec-fingerprint-input", "exec-convert", "exec-pretrain-multinode"):
        (mount,) = k8s[label]["pvcMount"]
        assert mount["mountPath"] == "/data"
        assert mount["pvcNameParameter"]["componentInputParameter"].endswith("data_pvc")
    (template,) = k8s["exec-pretrain-multinode"]["configMapAsVolume"]
    assert template["configMapName"] == pipeline_module.TRAINING_TEMPLATE_CONFIGMAP
    # GPU training: tolerates GPU taints, goes where gpu_node_selector says, has a big /dev/shm.
    gpu = k8s[gpu_exec]
    assert gpu["tolerations"] == [pipeline_module.GPU_TOLERATION]
    assert gpu["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith(
        "gpu_node_selector"
    )
    assert gpu["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    # Every step that talks to MLflow gets its credentials from Secrets.
    mlflow_steps = [
        label
        for label in executors
        if label.startswith(("exec-start-run", "exec-end-run", "exec-pretrain", "exec-probe"))
    ]
    for label in mlflow_steps:
        if label == "exec-pretrain-multinode":
            continue  # its job's pods read the secrets (the template's envFrom)
        secrets = {s["secretName"]: s for s in k8s[label]["secretAsEnv"]}
        assert set(secrets) == {
            pipeline_module.MLFLOW_SECRET,
            pipeline_module.OBJECT_STORE_SECRET,
        }, label
        envs = {k["envVar"] for s in secrets.values() for k in s["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY"} <= envs, label
    assert "secretAsEnv" not in k8s.get("exec-convert", {})


def _quantity(value: str) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, bytes)."""
    units = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
    }
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * units[suffix]
    return float(value)


def test_resource_defaults_are_valid_and_fit_the_trial_cluster(compiled, pipeline_module):
    """A default run schedules on docs/deploy.md's trial node beside Kubeflow Pipelines and MLflow."""
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    size = {
        (group, kind, bound): _quantity(params[f"{group}_{kind}_{bound}"]["defaultValue"])
        for group in RESOURCE_GROUPS
        for kind in ("cpu", "memory")
        for bound in ("request", "limit")
    }
    for group in RESOURCE_GROUPS:
        for kind in ("cpu", "memory"):
            # A limit below its request is rejected by the API server.
            assert 0 < size[group, kind, "request"] <= size[group, kind, "limit"], (group, kind)
    node = {kind: _quantity(v) for kind, v in pipeline_module.TRIAL_NODE.items()}
    reserved = {kind: _quantity(v) for kind, v in pipeline_module.TRIAL_NODE_RESERVED.items()}
    partitions = params["convert_partitions"]["defaultValue"]
    for kind in ("cpu", "memory"):
        request = {group: size[group, kind, "request"] for group in RESOURCE_GROUPS}
        # What runs at once: start-run, fingerprint-input and partition-indices; then the
        # convert partitions (start-run may still run); then one step at a time.
        peak = max(
            3 * request["control"],
            partitions * request["convert"] + request["control"],
            *(request[g] for g in ("merge", "stats", "pretrain", "embed", "probe")),
        )
        assert peak + reserved[kind] <= node[kind], kind
        # A step may use up to its limit: no limit is larger than the node.
        for group in RESOURCE_GROUPS:
            if group != "gpu_pretrain":  # GPU nodes, not the trial node
                assert size[group, kind, "limit"] <= node[kind], (group, kind)
    # The MLflow server and its database (the dev overlay) are part of the reserve.
    from tests.test_manifests import OVERLAYS, render

    manifests = {kind: 0.0 for kind in ("cpu", "memory")}
    for obj in render(OVERLAYS["dev"]):
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for kind in manifests:
                    manifests[kind] += obj["spec"]["replicas"] * _quantity(
                        container["resources"]["requests"][kind]
                    )
    for kind in manifests:
        assert manifests[kind] < reserved[kind], kind


def test_step_sources_run_alone(compiled):
    """Each step runs its function's source alone (KFP's ephemeral module): it must define cleanly."""
    _, spec, _ = compiled
    for label, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        source = container["command"][-1]
        function = container["args"][container["args"].index("--function_to_execute") + 1]
        namespace: dict = {}
        exec(compile(source, label, "exec"), namespace)  # defines the function: defaults evaluated
        assert callable(namespace[function]), label


def test_multinode_defaults_match_the_mounts():
    import inspect

    from components.pretrain_multinode import DATA_MOUNT, TEMPLATE_PATH, pretrain_multinode

    defaults = {
        name: p.default
        for name, p in inspect.signature(pretrain_multinode.python_func).parameters.items()
    }
    assert defaults["template_path"] == TEMPLATE_PATH
    assert defaults["scratch_dir"].startswith(DATA_MOUNT + "/")


def test_submit_no_cache(pipeline_module, monkeypatch):
    import kfp

    submitted = []

    class FakeClient:
        def __init__(self, **kwargs):
            pass

        def create_run_from_pipeline_package(self, package, **kwargs):
            submitted.append(kwargs)
            return type("Result", (), {"run_id": "run-1"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    argv = ["submit", "--host", "http://localhost:8080", "--param", "input_dir=/data/raw"]
    assert pipeline_module.main(argv) == 0
    assert pipeline_module.main([*argv, "--no-cache"]) == 0
    # None keeps the compiled per-step options (convert, merge, stats cached); False: none.
    assert [s["enable_caching"] for s in submitted] == [None, False]
    assert submitted[1]["arguments"] == {"input_dir": "/data/raw"}


# --------------------------------------------------------------------------------------
# The multi-node step, against a fake Kubernetes API
# --------------------------------------------------------------------------------------


class FakeCustomObjects:
    """Records the created PyTorchJob; 'runs' it by writing what rank 0 would; reports Succeeded."""

    created: list[dict] = []

    def __init__(self, *args, **kwargs):
        pass

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        FakeCustomObjects.created.append(body)
        args = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "args"
        ]
        output = Path(args[args.index("--output-dir") + 1])
        (output / "checkpoint").mkdir(parents=True)
        (output / "checkpoint" / "model.safetensors").write_bytes(b"weights")
        summary = {"run_id": "r1", "model_uri": "models:/spacenit-encoder@champion", "model_version": "3",
                   "final_loss": 0.5, "world_size": 16}  # fmt: skip
        (output / "pretrain_summary.json").write_text(json.dumps(summary))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {
            "status": {
                "conditions": [
                    {"type": "Created", "status": "True"},
                    {"type": "Succeeded", "status": "True"},
                ]
            }
        }


def test_multinode_step_renders_and_submits_a_pytorchjob(tmp_path, monkeypatch):
    from kfp.dsl import Artifact, Dataset, Model
    from kubernetes import client, config

    from components.pretrain_multinode import pretrain_multinode
    from spacenit.cli import _parser
    from tests.test_manifests import pytorchjob_problems

    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CustomObjectsApi", FakeCustomObjects)
    FakeCustomObjects.created = []
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "dataset.json").write_text("{}")
    (tmp_path / "stats.json").write_text("{}")
    model = Model(uri=str(tmp_path / "model"))
    pretrain_multinode.python_func(
        dataset=Dataset(uri=str(tmp_path / "dataset")),
        stats=Artifact(uri=str(tmp_path / "stats.json")),
        model=model,
        num_nodes=2,
        gpus_per_node=8,
        steps=10,
        overrides=["train.lr=1e-4"],
        tracking_uri="http://spacenit-mlflow:5000",
        parent_run_id="parent123",
        data_pvc="my-data",
        scratch_dir=str(tmp_path / "scratch"),
        template_path=str(TEMPLATE),
        namespace="team-a",
        image=IMAGE_CUDA,
        poll_s=0,
    )
    (job,) = FakeCustomObjects.created
    assert pytorchjob_problems(job) == []
    assert job["metadata"]["namespace"] == "team-a" and job["metadata"]["name"].startswith(
        "spacenit-pretrain-"
    )
    assert job["spec"]["nprocPerNode"] == "8"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    for role in ("Master", "Worker"):
        pod = replicas[role]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE_CUDA
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env["SPACENIT_NUM_NODES"] == "2" and env["SPACENIT_GPUS_PER_NODE"] == "8"
        assert env["SPACENIT_PARENT_RUN_ID"] == "parent123"
        assert [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if v["name"] == "data"
        ] == ["my-data"]
        # The pods run `spacenit pretrain` with these arguments: the real CLI accepts them.
        args = _parser().parse_args(["pretrain", *container["args"]])
        assert args.overrides == [
            "train.steps=10",
            "train.global_batch_size=16",
            "train.seed=0",
            "train.lr=1e-4",
        ]
        assert args.tracking_uri == "http://spacenit-mlflow:5000"
        assert (
            "accelerate launch" in container["command"][2]
            and '--machine_rank "$RANK"' in container["command"][2]
        )
    # The checkpoint came back into the Model artifact, and the scratch copy is gone.
    assert (tmp_path / "model" / "checkpoint" / "model.safetensors").is_file()
    assert model.metadata["version"] == "3" and model.metadata["world_size"] == 16
    assert list((tmp_path / "scratch").iterdir()) == []


def test_pretrain_component_launches_accelerate_for_several_gpus(tmp_path, monkeypatch):
    """gpus_per_node > 1: `accelerate launch --multi_gpu --num_processes N -m spacenit.cli pretrain ...`."""
    import subprocess

    from kfp.dsl import Artifact, Dataset, Model

    from components.pretrain import pretrain
    from spacenit.cli import _parser

    calls = []
    real_run = subprocess.run

    def fake_run(command, *args, **kwargs):
        if "accelerate.commands.launch" not in command:
            return real_run(command, *args, **kwargs)  # e.g. an import probing the platform
        calls.append(command)
        out = Path(command[command.index("--output-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "run_id": "r",
            "model_uri": "",
            "model_version": None,
            "final_loss": 1.0,
            "world_size": 4,
        }
        (out / "pretrain_summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("SPACENIT_PARENT_RUN_ID", raising=False)
    model = Model(uri=str(tmp_path / "model"))
    pretrain.python_func(
        dataset=Dataset(uri=str(tmp_path / "d")), stats=Artifact(uri=str(tmp_path / "s.json")), model=model,
        gpus_per_node=4, parent_run_id="p1", register_as="",
    )  # fmt: skip
    (command,) = calls
    launch = command[: command.index("spacenit.cli") + 1]
    assert launch[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in launch and launch[launch.index("--num_processes") + 1] == "4"
    args = _parser().parse_args(command[command.index("spacenit.cli") + 1 :])
    assert args.verb == "pretrain" and args.register_as == ""
    assert model.metadata["world_size"] == 4
    import os

    assert os.environ.pop("SPACENIT_PARENT_RUN_ID") == "p1"  # inherited by accelerate's workers


# --------------------------------------------------------------------------------------
# The whole DAG, locally
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_runs_locally(
    pipeline_module, synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole DAG under kfp.local, tracked over HTTP by a real MLflow server run as the manifests deploy it."""
    from mlflow.tracking import MlflowClient

    from spacenit.evaluation.embed import load_embeddings
    from tests.test_mlflow_server import mlflow_server

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    start = time.monotonic()
    with mlflow_server(tmp_path / "mlflow-server") as tracking_uri:
        result = pipeline_module.run_local(
            synthetic_dir,
            tmp_path / "kfp-root",
            tracking_uri,
            experiment="pipeline-test",
            convert_partitions=2,
            tile_size_px=24,
            steps=6,
            global_batch_size=8,
            pretrain_overrides=["model.depth=2", "model.decoder_depth=1"],
            k=5,
        )
        print(f"local pipeline run: {time.monotonic() - start:.1f} s")
        _check_local_run(result, tmp_path, MlflowClient(tracking_uri), load_embeddings)


def _check_local_run(result, tmp_path: Path, client, load_embeddings) -> None:
    # Probe metrics, as the Metrics artifact and as the JSON report.
    for name in ["knn_accuracy", "linear_accuracy", "majority_accuracy"]:
        assert 0.0 <= result.metrics[name] <= 1.0, name
    assert result.metrics["num_train"] + result.metrics["num_test"] == 24
    report = json.loads(result.artifacts["probe_report"].read_text())
    assert report["knn_accuracy"] == result.metrics["knn_accuracy"]

    # Every artifact lies under the pipeline root; convert fanned out over 2 partitions.
    root = (tmp_path / "kfp-root").resolve()
    for name, path in result.artifacts.items():
        assert path.exists(), name
        assert root in path.parents, name
    assert (
        len(list(result.run_dir.glob("for-loop-*-iteration-*/convert/dataset/dataset.json"))) == 2
    )
    assert (result.artifacts["dataset"] / "dataset.json").is_file()
    assert json.loads(result.artifacts["stats"].read_text())["num_samples"] == 24
    assert (result.artifacts["model"] / "checkpoint" / "model.safetensors").is_file()
    assert (result.artifacts["model"] / "pretrain_summary.json").is_file()

    emb = load_embeddings(result.artifacts["embeddings"])
    assert emb.vectors.shape[0] == 24 == len(emb.ids)

    # MLflow: the pipeline run, closed, with the pretrain and probe runs nested under it.
    experiment = client.get_experiment_by_name("pipeline-test")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs[result.parent_run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["kfp.state"] == "SUCCEEDED"
    children = {
        r.data.tags["spacenit.stage"]: r
        for r in runs.values()
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"pretrain", "probe"}
    assert children["probe"].data.metrics["knn_accuracy"] == result.metrics["knn_accuracy"]
    assert parent.data.metrics["probe.knn_accuracy"] == result.metrics["knn_accuracy"]
    assert result.model_metadata["run_id"] == children["pretrain"].info.run_id

    version = client.get_model_version_by_alias("spacenit-encoder", "champion")
    assert version.run_id == children["pretrain"].info.run_id
    assert result.model_metadata["version"] == str(version.version)

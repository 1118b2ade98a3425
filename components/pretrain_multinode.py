"""KFP component of the `pretrain` stage across nodes: submits a Kubeflow PyTorchJob and waits.

The job is the template `manifests/base/training/pytorchjob.yaml`, which Kustomize
ships as the ConfigMap `spacenit-training-template`; the pipeline mounts it at
`template_path`. This step fills in the run's fields, copies the dataset and stats
onto the shared data PVC (the job's pods mount it; KFP's artifact store they cannot
see), creates the job with the Kubernetes API, waits for it, and copies the
checkpoint back into its `model` artifact. Each of the job's pods runs `accelerate
launch` with one process per GPU; rank 0 logs to MLflow and registers the encoder.

The step itself needs no GPU, only a service account that may create PyTorchJobs
(manifests/base/rbac).
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE

#: Where the pipeline mounts the ConfigMap holding the job template.
TEMPLATE_MOUNT = "/etc/spacenit/training"
TEMPLATE_PATH = f"{TEMPLATE_MOUNT}/pytorchjob.yaml"
#: Where the pipeline mounts the shared data PVC, in this step and in the job's pods.
DATA_MOUNT = "/data"
# The step runs as its function's source alone (KFP's ephemeral module): its defaults must
# be literals, not these names; tests/test_pipeline.py checks they agree.


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain_multinode(
    dataset: Input[Dataset],
    stats: Input[Artifact],
    model: Output[Model],
    num_nodes: int = 2,
    gpus_per_node: int = 8,
    steps: int = 200,
    global_batch_size: int = 16,
    model_preset: str = "spacenit_nano",
    seed: int = 0,
    overrides: list[str] = [],  # noqa: B006 (KFP copies the default into the spec; never mutated)
    tracking_uri: str = "",
    experiment: str = "spacenit",
    parent_run_id: str = "",
    register_as: str = "spacenit-encoder",
    alias: str = "champion",
    image: str = "",
    data_pvc: str = "spacenit-data",
    scratch_dir: str = "/data/spacenit-jobs",
    template_path: str = "/etc/spacenit/training/pytorchjob.yaml",
    namespace: str = "",
    timeout_s: int = 7 * 24 * 3600,
    poll_s: int = 30,
):
    """Pretrain on `num_nodes` x `gpus_per_node` GPUs as a PyTorchJob; the checkpoint lands in `model.path`.

    `image` is the job's (the pipeline passes the CUDA image of components/image.py).

    `scratch_dir` must lie on the PVC `data_pvc`, mounted here and in the job's pods
    at the same path. An empty `namespace` is this pod's own. The job is deleted on
    timeout; a failed job is kept for its logs (the template's
    ttlSecondsAfterFinished removes it).
    """
    import copy
    import json
    import shutil
    import time
    import uuid
    from pathlib import Path

    import yaml
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    if not image:
        raise ValueError("pretrain_multinode needs the job's `image` (the SpaceNit CUDA image)")
    if num_nodes < 2 or gpus_per_node < 1:
        raise ValueError(
            f"a multi-node job needs num_nodes >= 2 and gpus_per_node >= 1, got {num_nodes} x {gpus_per_node}"
        )
    job_name = f"spacenit-pretrain-{uuid.uuid4().hex[:8]}"
    if not namespace:
        namespace = (
            Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        )

    # The job's pods see the shared PVC, not KFP's artifact store: stage the inputs there.
    workdir = Path(scratch_dir) / job_name
    shutil.copytree(dataset.path, workdir / "dataset")
    shutil.copyfile(stats.path, workdir / "stats.json")
    output_dir = workdir / "output"
    args = [
        str(workdir / "dataset"), "--stats", str(workdir / "stats.json"), "--output-dir", str(output_dir),
        "--model", model_preset, "--mlflow-experiment", experiment, "--register-as", register_as, "--alias", alias,
    ]  # fmt: skip
    for override in [
        f"train.steps={steps}",
        f"train.global_batch_size={global_batch_size}",
        f"train.seed={seed}",
        *overrides,
    ]:
        args += ["--set", override]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]

    # Fill the template: only the run's fields; the platform owns the rest.
    job = yaml.safe_load(Path(template_path).read_text())
    job["metadata"]["name"] = job_name
    job["metadata"]["namespace"] = namespace
    job["spec"]["nprocPerNode"] = str(gpus_per_node)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    replicas["Master"]["replicas"] = 1
    replicas["Worker"]["replicas"] = num_nodes - 1
    env = {
        "SPACENIT_NUM_NODES": str(num_nodes),
        "SPACENIT_GPUS_PER_NODE": str(gpus_per_node),
        "SPACENIT_PARENT_RUN_ID": parent_run_id,
    }
    for spec in replicas.values():
        spec["template"] = copy.deepcopy(spec["template"])  # YAML anchors share one pod template
        pod = spec["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "pytorch")
        container["image"] = image
        container["args"] = args
        container["env"] = [e for e in container.get("env", []) if e["name"] not in env]
        container["env"] += [{"name": k, "value": v} for k, v in env.items()]
        for kind in ("requests", "limits"):
            container.setdefault("resources", {}).setdefault(kind, {})["nvidia.com/gpu"] = str(
                gpus_per_node
            )
        for volume in pod.get("volumes", []):
            if volume["name"] == "data":
                volume["persistentVolumeClaim"]["claimName"] = data_pvc
    print(f"PyTorchJob {namespace}/{job_name}:\n{yaml.safe_dump(job, sort_keys=False)}", flush=True)

    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    api = k8s.CustomObjectsApi()
    group = ("kubeflow.org", "v1", namespace, "pytorchjobs")
    api.create_namespaced_custom_object(*group, job)
    deadline = time.monotonic() + timeout_s
    while True:
        status = api.get_namespaced_custom_object(*group, job_name).get("status") or {}
        true = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
        if "Succeeded" in true:
            break
        if "Failed" in true:
            raise RuntimeError(
                f"PyTorchJob {namespace}/{job_name} failed: {true['Failed'].get('message', '')}; "
                f"logs: kubectl -n {namespace} logs -l training.kubeflow.org/job-name={job_name}"
            )
        if time.monotonic() > deadline:
            api.delete_namespaced_custom_object(*group, job_name)
            raise TimeoutError(
                f"PyTorchJob {namespace}/{job_name} did not finish in {timeout_s} s; deleted it"
            )
        time.sleep(poll_s)

    shutil.copytree(output_dir, model.path, dirs_exist_ok=True)
    summary = json.loads((Path(model.path) / "pretrain_summary.json").read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    model.metadata["run_id"] = summary["run_id"] or ""
    model.metadata["model_uri"] = summary["model_uri"] or ""
    model.metadata["version"] = summary["model_version"] or ""
    model.metadata["final_loss"] = summary["final_loss"]
    model.metadata["world_size"] = summary["world_size"]
    model.metadata["preset"] = model_preset
    model.metadata["pytorchjob"] = f"{namespace}/{job_name}"
    print(
        f"checkpoint: {model.path}\nmlflow run: {summary['run_id']}\nmodel: {summary['model_uri']}"
    )


pretrain_multinode_op = pretrain_multinode

"""The Kubernetes manifests (manifests/): they parse, render, validate, and fit the pipeline.

No cluster here. Every overlay is rendered by `render()`, a small Kustomize subset
(resources, namespace, generators without hash suffixes, images, JSON 6902 patches
and `$patch: delete`) that refuses anything else, and, where a `kubectl` with
Kustomize is installed, compared with `kubectl kustomize`. Each rendered object is
validated against the Kubernetes OpenAPI schema (kubernetes-validate, offline); the
PyTorchJob template's pod templates are validated as Pods. Every pod (workloads, the
PyTorchJob's, the tools pod) is checked against the Pod Security Standards' "restricted"
profile by k8s-policy-guard (PyPI, offline).
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components.image import IMAGE

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
OVERLAYS = {p.name: p for p in sorted((MANIFESTS / "overlays").iterdir()) if p.is_dir()}
TEMPLATE = MANIFESTS / "base" / "training" / "pytorchjob.yaml"
#: Oldest and newest Kubernetes versions the manifests must validate against.
K8S_VERSIONS = ["1.29.0", "1.33.0"]
#: Secrets the prod overlay expects to exist already (created as docs/deploy.md says).
EXTERNAL_SECRETS = {
    "spacenit-postgres",
    "spacenit-object-store",
    "spacenit-mlflow-client",
    "spacenit-mlflow-auth",
}


def _pipeline():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import pipelines.spacenit_pipeline as pipeline

    return pipeline


# --------------------------------------------------------------------------------------
# A Kustomize subset
# --------------------------------------------------------------------------------------

SUPPORTED_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "configMapGenerator", "secretGenerator",
    "generatorOptions", "images", "patches",
}  # fmt: skip


class KustomizeError(ValueError):
    pass


def _load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _generated(kind: str, spec: dict, root: Path, options: dict) -> dict:
    if not (
        options.get("disableNameSuffixHash") or spec.get("options", {}).get("disableNameSuffixHash")
    ):
        raise KustomizeError(
            f"{spec['name']}: name suffix hashes are not supported (set disableNameSuffixHash)"
        )
    if set(spec) - {"name", "files", "literals", "options"}:
        raise KustomizeError(
            f"{spec['name']}: unsupported generator keys {set(spec) - {'name', 'files', 'literals'}}"
        )
    data = {}
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for file in spec.get("files", []):
        key, eq, rel = file.partition("=")
        path = root / (rel if eq else key)
        data[key if eq else path.name] = path.read_text()
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _apply_json6902(obj: dict, ops: list[dict]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "replace":
            if isinstance(node, list):
                node[int(last)] = op["value"]
            elif last in node:
                node[last] = op["value"]
            else:
                raise KustomizeError(f"replace {op['path']}: no such member")
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise KustomizeError(f"JSON 6902 op {op['op']!r} is not supported")


def _matches(obj: dict, target: dict) -> bool:
    if set(target) - {"kind", "name"}:
        raise KustomizeError(f"patch targets by {set(target)} are not supported (kind, name only)")
    name = obj["metadata"]["name"]
    return obj["kind"] == target.get("kind", obj["kind"]) and name == target.get("name", name)


def _image_fields(obj: dict):
    """Every container of a workload's pod template, or of a Pod."""
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") if "template" in spec else spec
    for key in ("initContainers", "containers"):
        yield from (pod or {}).get(key, [])


def _split_image(image: str) -> tuple[str, str]:
    name, _, digest = image.partition("@")
    if digest:
        return name, "@" + digest
    head, sep, tag = name.rpartition(":")
    return (head, ":" + tag) if sep and "/" not in tag else (name, "")


def render(directory: Path) -> list[dict]:
    """The objects `kustomize build directory` gives, for the subset of Kustomize we use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization keys {sorted(unsupported)}")
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else _load_yaml_docs(path)
    options = kustomization.get("generatorOptions", {})
    for spec in kustomization.get("configMapGenerator", []):
        objects.append(_generated("ConfigMap", spec, directory, options))
    for spec in kustomization.get("secretGenerator", []):
        objects.append(_generated("Secret", spec, directory, options))

    for patch in kustomization.get("patches", []):
        body = yaml.safe_load(
            patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
        )
        if isinstance(body, list):  # JSON 6902
            targets = [o for o in objects if _matches(o, patch["target"])]
            if not targets:
                raise KustomizeError(f"patch target {patch['target']} matches nothing")
            for obj in targets:
                _apply_json6902(obj, body)
        elif body.get("$patch") == "delete":
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
            kept = [o for o in objects if not _matches(o, target)]
            if len(kept) == len(objects):
                raise KustomizeError(f"$patch: delete of {target} matches nothing")
            objects = kept
        else:
            raise KustomizeError(
                "strategic merge patches other than `$patch: delete` are not supported"
            )

    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _image_fields(obj):
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    new_tag = f":{image['newTag']}" if "newTag" in image else tag
                    container["image"] = f"{image.get('newName', name)}{new_tag}"

    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            obj["metadata"]["namespace"] = namespace
            for subject in obj.get("subjects", []) if obj["kind"].endswith("RoleBinding") else []:
                if subject["kind"] == "ServiceAccount" and subject.get("namespace") in (
                    None,
                    "default",
                ):
                    subject["namespace"] = namespace
    return objects


def _key(obj: dict) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _by_key(objects: list[dict]) -> dict[tuple[str, str, str], dict]:
    found = {}
    for obj in objects:
        assert _key(obj) not in found, f"{_key(obj)} appears twice"
        found[_key(obj)] = obj
    return found


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request) -> tuple[str, dict[tuple[str, str, str], dict]]:
    return request.param, _by_key(render(OVERLAYS[request.param]))


def _get(objects: dict, kind: str, name: str) -> dict:
    found = [o for (k, _, n), o in objects.items() if k == kind and n == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# --------------------------------------------------------------------------------------
# Files and rendering
# --------------------------------------------------------------------------------------


def test_every_manifest_file_parses():
    files = sorted(MANIFESTS.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        docs = _load_yaml_docs(path)
        assert docs, path
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), f"{path}: a document without apiVersion/kind"


def test_overlays_exist():
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (with Kustomize) installed")
@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_render_matches_kubectl_kustomize(name):
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS[name])], capture_output=True, text=True, check=True
    )
    expected = _by_key(d for d in yaml.safe_load_all(out.stdout) if d)
    assert _by_key(render(OVERLAYS[name])) == expected


def test_renderer_refuses_what_it_cannot_do(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "configMapGenerator: [{name: a, literals: [k=v]}]\n"
    )
    with pytest.raises(KustomizeError, match="hash"):
        render(tmp_path)


def test_renderer_json6902_and_delete(tmp_path):
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: '1', l: '2'}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: ns\nresources: [cm.yaml]\npatches:\n"
        "  - target: {kind: ConfigMap, name: a}\n"
        '    patch: \'[{op: replace, path: /data/x, value: "2"}, {op: remove, path: /data/l},'
        ' {op: add, path: /data/y, value: "3"}]\'\n'
        "  - patch: '{$patch: delete, apiVersion: v1, kind: ConfigMap, metadata: {name: b}}'\n"
    )
    (obj,) = render(tmp_path)
    assert obj["data"] == {"x": "2", "y": "3"} and obj["metadata"]["namespace"] == "ns"


# --------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate(overlay, version):
    _, objects = overlay
    for key, obj in objects.items():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{key} (Kubernetes {version}): {e.message} at {'/'.join(map(str, e.path))}"
            )


def test_validation_catches_a_broken_object(overlay):
    _, objects = overlay
    deployment = copy.deepcopy(_get(objects, "Deployment", "spacenit-mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def pytorchjob_problems(job: dict, version: str = K8S_VERSIONS[-1]) -> list[str]:
    """A kubeflow.org/v1 PyTorchJob: its own fields, and its pod templates validated as Pods."""
    problems = []
    if (job.get("apiVersion"), job.get("kind")) != ("kubeflow.org/v1", "PyTorchJob"):
        problems.append(
            f"not a kubeflow.org/v1 PyTorchJob: {job.get('apiVersion')} {job.get('kind')}"
        )
    if not job.get("metadata", {}).get("name"):
        problems.append("metadata.name is missing")
    spec = job.get("spec", {})
    unknown = set(spec) - {"pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "nprocPerNode"}
    if unknown:
        problems.append(f"unknown spec fields {sorted(unknown)}")
    if not isinstance(spec.get("nprocPerNode", ""), str):
        problems.append("spec.nprocPerNode must be a string")
    replicas = spec.get("pytorchReplicaSpecs", {})
    if set(replicas) - {"Master", "Worker"} or "Master" not in replicas:
        problems.append(
            f"pytorchReplicaSpecs must have Master (and Worker), got {sorted(replicas)}"
        )
    if replicas.get("Master", {}).get("replicas", 1) != 1:
        problems.append("Master must have 1 replica")
    for role, replica in replicas.items():
        if not isinstance(replica.get("replicas"), int) or replica["replicas"] < 0:
            problems.append(f"{role}.replicas must be a non-negative integer")
        if replica.get("restartPolicy", "OnFailure") not in {
            "Always",
            "OnFailure",
            "Never",
            "ExitCode",
        }:
            problems.append(f"{role}.restartPolicy {replica.get('restartPolicy')!r}")
        template = replica.get("template", {})
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template.get("metadata", {})},
               "spec": template.get("spec", {})}  # fmt: skip
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{role} pod template: {e.message} at {'/'.join(map(str, e.path))}")
        names = [c.get("name") for c in pod["spec"].get("containers", [])]
        if "pytorch" not in names:
            problems.append(
                f"{role}: the training operator needs a container named 'pytorch', got {names}"
            )
    return problems


def test_pytorchjob_template_is_a_valid_pytorchjob():
    (job,) = _load_yaml_docs(TEMPLATE)
    assert pytorchjob_problems(job) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda j: j["spec"]["pytorchReplicaSpecs"].pop("Master"), "Master"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="2"), "non-negative"),
        (lambda j: j["spec"].update(nprocPerNode=8), "string"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(
            template={"spec": {"containers": [{"name": "main", "image": "x"}]}}), "named 'pytorch'"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(
            template={"spec": {"containers": [{"name": "pytorch", "image": "x", "resource": {}}]}}), "pod template"),
    ],
)  # fmt: skip
def test_pytorchjob_checks_catch_breakage(edit, expected):
    (job,) = _load_yaml_docs(TEMPLATE)
    job = copy.deepcopy(job)
    edit(job)
    assert any(expected in p for p in pytorchjob_problems(job)), pytorchjob_problems(job)


# --------------------------------------------------------------------------------------
# The manifests fit together, and fit the pipeline
# --------------------------------------------------------------------------------------


def _pod_specs(objects: dict):
    for key, obj in objects.items():
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            yield key, obj["spec"]["template"]


def _referenced(objects: dict) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {
        "Secret": set(),
        "ConfigMap": set(),
        "PersistentVolumeClaim": set(),
    }
    for _, template in _pod_specs(objects):
        spec = template["spec"]
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if field in source:
                        refs[kind].add(source[field]["name"])
            for env in c.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    refs["Secret"].add(env["valueFrom"]["secretKeyRef"]["name"])
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                refs["PersistentVolumeClaim"].add(volume["persistentVolumeClaim"]["claimName"])
            if "configMap" in volume:
                refs["ConfigMap"].add(volume["configMap"]["name"])
    return refs


def test_references_resolve(overlay):
    name, objects = overlay
    names = {(k, n) for k, _, n in objects}
    for kind, wanted in _referenced(objects).items():
        for ref in wanted:
            if (kind, ref) not in names:
                assert name != "dev", (
                    f"{kind}/{ref} is referenced but the dev overlay does not create it"
                )
                assert kind == "Secret" and ref in EXTERNAL_SECRETS, (
                    f"{kind}/{ref} is never created"
                )


def test_workloads_are_healthy_citizens(overlay):
    _, objects = overlay
    services = [o for o in objects.values() if o["kind"] == "Service"]
    for key, template in _pod_specs(objects):
        workload = objects[key]
        labels = template["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), key
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, key
        for c in template["spec"]["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{key}: probes"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], (
                f"{key}: resources"
            )
        # Each workload is behind a Service whose selector picks its pods and whose
        # targetPort is a named port of the container.
        (service,) = [s for s in services if s["spec"]["selector"].items() <= labels.items()]
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, key


def test_mlflow_server(overlay):
    name, objects = overlay
    deployment = _get(objects, "Deployment", "spacenit-mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The server runs from the package's CPU image: one MLflow version for server and steps.
    assert container["image"] == IMAGE
    args = container["args"]
    assert args[0] == "server" and "--serve-artifacts" in args
    assert any(a.startswith("--backend-store-uri=postgresql") for a in args)
    env = {e["name"]: e.get("value") for e in container["env"]}
    destination = env["ARTIFACTS_DESTINATION"]
    if name == "prod":
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert destination.startswith("s3://") and not any(
            "persistentVolumeClaim" in v for v in volumes
        )
        assert {"secretRef": {"name": "spacenit-object-store"}} in container["envFrom"]
        # Authentication: MLflow's basic-auth app, the admin and session key from a Secret.
        assert "--app-name=basic-auth" in args
        assert {"secretRef": {"name": "spacenit-mlflow-auth"}} in container["envFrom"]
        assert env["MLFLOW_AUTH_CONFIG_PATH"].startswith(
            next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "auth-config")
        )
        assert deployment["spec"]["replicas"] > 1
        assert ("PersistentVolumeClaim", "spacenit-mlflow-artifacts") not in {
            (k, n) for k, _, n in objects
        }
    else:
        assert "--app-name=basic-auth" not in args
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert destination in mounts
    service = _get(objects, "Service", "spacenit-mlflow")
    # The Host header in-cluster clients send must be allowed.
    allowed = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "spacenit-mlflow:*" in allowed and f"{service['metadata']['name']}.*" in allowed


def test_dev_client_secret_points_at_the_service():
    objects = _by_key(render(OVERLAYS["dev"]))
    secret = _get(objects, "Secret", "spacenit-mlflow-client")
    uri = base64.b64decode(secret["data"]["MLFLOW_TRACKING_URI"]).decode()
    service = _get(objects, "Service", "spacenit-mlflow")
    assert uri == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    postgres = _get(objects, "Secret", "spacenit-postgres")
    assert set(postgres["data"]) == {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def test_pipeline_finds_its_kubernetes_objects(overlay):
    """The names compiled into the pipeline exist in every overlay (or are documented secrets)."""
    pipeline = _pipeline()
    _, objects = overlay
    names = {(k, n) for k, _, n in objects}
    assert ("PersistentVolumeClaim", pipeline.DATA_PVC) in names
    assert ("ConfigMap", pipeline.TRAINING_TEMPLATE_CONFIGMAP) in names
    for secret in (pipeline.MLFLOW_SECRET, pipeline.OBJECT_STORE_SECRET):
        assert ("Secret", secret) in names or secret in EXTERNAL_SECRETS
    template = _get(objects, "ConfigMap", pipeline.TRAINING_TEMPLATE_CONFIGMAP)
    assert template["data"] == {"pytorchjob.yaml": TEMPLATE.read_text()}
    # The multi-node step mounts the template under the file name the step reads.
    from components.pretrain_multinode import TEMPLATE_MOUNT, TEMPLATE_PATH

    assert TEMPLATE_PATH == f"{TEMPLATE_MOUNT}/{TEMPLATE.name}"


def test_rbac_lets_the_pipeline_run_pytorchjobs(overlay):
    _, objects = overlay
    pipeline = _pipeline()
    import inspect

    service_account = inspect.signature(pipeline.submit).parameters["service_account"].default
    assert ("ServiceAccount", service_account) in {(k, n) for k, _, n in objects}
    binding = _get(objects, "RoleBinding", service_account)
    assert {"kind": "ServiceAccount", "name": service_account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]
    ]
    namespace = binding["metadata"]["namespace"]
    assert all(s.get("namespace", namespace) == namespace for s in binding["subjects"])
    role = _get(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("create", "get", "delete"):
        assert ("kubeflow.org", "pytorchjobs", verb) in allowed
    # What every KFP v2 step's launcher reads: its ConfigMap, and the artifact store's Secret
    # alone (by name), not every Secret of the namespace.
    assert ("", "configmaps", "get") in allowed and ("", "secrets", "get") in allowed
    for rule in role["rules"]:
        if "secrets" in rule["resources"]:
            assert rule["resourceNames"] == ["mlpipeline-minio-artifact"] and rule["verbs"] == [
                "get"
            ], rule


def test_kustomization_image_is_the_package_image():
    kustomization = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert f"{image['newName']}:{image['newTag']}" == IMAGE, (
        "manifests/base/kustomization.yaml names another image than the configured one; run "
        "`cd manifests/base && kustomize edit set image spacenit=$(python -m components.image cpu)`"
    )


# --------------------------------------------------------------------------------------
# docs/deploy.md: every command is exercised here, or listed with why it cannot be
# --------------------------------------------------------------------------------------

DEPLOY_DOC = REPO / "docs" / "deploy.md"
#: Commands that need a live cluster or the internet (prefix -> why not exercised here).
NOT_EXERCISED = {
    "export PIPELINE_VERSION=": "sets the Kubeflow Pipelines release for the next lines",
    'kubectl apply -k "github.com/kubeflow/pipelines/': "installs Kubeflow Pipelines from GitHub into a cluster",
    "kubectl wait --for condition=established --timeout=60s crd/applications.app.k8s.io": "needs a cluster",
    'kubectl apply --server-side -k "github.com/kubeflow/training-operator': "installs the Training Operator from GitHub",
    "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80": "Kubeflow Pipelines' own Service; needs a cluster",
}
#: The keys each Secret the prod overlay expects must have (at least).
SECRET_KEYS = {
    "spacenit-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "spacenit-object-store": {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL",
    },
    "spacenit-mlflow-client": {"MLFLOW_TRACKING_URI"},
    "spacenit-mlflow-auth": {
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    },
}


def doc_commands(markdown: str) -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined."""
    commands, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        if in_block and line.strip() and not line.lstrip().startswith("#"):
            pending += line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
            else:
                commands.append(pending)
                pending = ""
    return commands


def _rendered_namespaces() -> dict[str, dict]:
    out = {}
    for path in OVERLAYS.values():
        objects = _by_key(render(path))
        (namespace,) = {ns for _, ns, _ in objects}
        out[namespace] = objects
    return out


def test_deploy_doc_commands(tmp_path, monkeypatch):
    import shlex

    import kfp

    from spacenit.cli import _parser as cli_parser

    pipeline = _pipeline()
    namespaces = _rendered_namespaces()
    tools_pod = _load_yaml_docs(MANIFESTS / "tools" / "data-shell.yaml")[0]
    commands = doc_commands(DEPLOY_DOC.read_text())
    assert len(commands) >= 15
    submitted = []

    class FakeClient:
        def __init__(self, **kwargs):
            pass

        def create_run_from_pipeline_package(self, package, **kwargs):
            submitted.append((package, kwargs))
            return type("Result", (), {"run_id": "run-1"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    checked = 0
    for command in commands:
        if any(command.startswith(prefix) for prefix in NOT_EXERCISED):
            continue
        words = shlex.split(command)
        checked += 1
        if words[:3] == ["kubectl", "apply", "-k"]:
            overlay = Path(words[3])
            assert overlay.parent == Path("manifests/overlays") and overlay.name in OVERLAYS, (
                command
            )
            continue
        if words[:3] == ["kubectl", "create", "namespace"]:
            assert words[3] in namespaces, command
            continue
        assert words[0] != "kubectl" or words[1] == "-n", f"kubectl without a namespace: {command}"
        if words[0] == "kubectl":
            namespace, verb, rest = words[2], words[3], words[4:]
            objects = namespaces[namespace]
            names = {(k, n) for k, _, n in objects}
            if verb == "create" and rest[:2] == ["secret", "generic"]:
                secret = rest[2]
                keys = {w.split("=", 2)[1] for w in rest if w.startswith("--from-literal=")}
                assert keys >= SECRET_KEYS[secret] and secret in EXTERNAL_SECRETS, command
                if shutil.which("kubectl"):
                    out = subprocess.run(
                        [*words, "--dry-run=client", "-o", "yaml"],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    made = yaml.safe_load(out.stdout)
                    assert made["metadata"] == {
                        "name": secret,
                        "namespace": namespace,
                        "creationTimestamp": None,
                    }
                    assert set(made["data"]) == keys
            elif verb == "rollout":
                kind, name = rest[1].split("/")
                assert (
                    {"deployment": "Deployment", "statefulset": "StatefulSet"}[kind],
                    name,
                ) in names, command
            elif verb == "port-forward":
                service = _get(objects, "Service", rest[0].removeprefix("svc/"))
                assert int(rest[1].split(":")[1]) == service["spec"]["ports"][0]["port"], command
            elif verb in ("apply", "delete") and rest[0] == "-f":
                assert rest[1] == "manifests/tools/data-shell.yaml", command
            elif verb == "wait":
                assert rest[-2] == f"pod/{tools_pod['metadata']['name']}", command
            elif verb == "cp":
                pod, _, target = rest[1].partition(":")
                assert pod == tools_pod["metadata"]["name"] and target.startswith("/data/"), command
            else:
                pytest.fail(f"unchecked kubectl command: {command}")
        elif words == ["make", "compile"]:
            assert "\ncompile:" in (REPO / "Makefile").read_text()
        elif words[-1] == "images/build.sh":
            assert (
                words[:-1] == ["PUSH=1"] and (REPO / "images" / "build.sh").stat().st_mode & 0o111
            )
        elif words[:3] == [".venv/bin/python", "-m", "pipelines.spacenit_pipeline"]:
            assert pipeline.main(words[3:]) == 0, command
        elif words[:3] == [".venv/bin/python", "-m", "spacenit.conversion.synthetic"]:
            subprocess.run(
                [sys.executable, *words[1:]], cwd=tmp_path, check=True, capture_output=True
            )
            assert any((tmp_path / words[3]).rglob("*.tif"))
        elif words[0] == ".venv/bin/spacenit":
            cli_parser().parse_args(words[1:])
        else:
            pytest.fail(f"docs/deploy.md has a command no test exercises: {command}")
    assert checked >= 15

    # Each `submit` started a run of the compiled pipeline, as the pipeline's service account,
    # with parameters the pipeline has.
    assert len(submitted) == 3
    spec = yaml.safe_load_all(pipeline.DEFAULT_YAML.read_text()).__next__()
    params = spec["root"]["inputDefinitions"]["parameters"]
    for package, kwargs in submitted:
        assert (
            Path(package) == pipeline.DEFAULT_YAML
            and kwargs["service_account"] == "spacenit-pipeline"
        )
        assert set(kwargs["arguments"]) <= set(params)
    assert submitted[1][1]["arguments"]["gpu_node_selector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"
    }
    assert (
        namespaces["kubeflow"]
        and tools_pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == pipeline.DATA_PVC
    )


def test_kfp_release_in_the_docs_is_the_pinned_sdk():
    pins = dict(
        line.split("==")
        for line in (REPO / "images" / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert f"export PIPELINE_VERSION={pins['kfp']}" in doc_commands(DEPLOY_DOC.read_text())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_tools_pod_validates(version):
    for doc in _load_yaml_docs(MANIFESTS / "tools" / "data-shell.yaml"):
        kubernetes_validate.validate(doc, version, strict=True)


# --------------------------------------------------------------------------------------
# Pod Security "restricted", network policies, disruption budget
# --------------------------------------------------------------------------------------


def every_pod() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests make: workloads of each overlay, the
    PyTorchJob template's replicas, the tools pod."""
    pods = []
    for name, path in OVERLAYS.items():
        for key, template in _pod_specs(_by_key(render(path))):
            pods.append((f"{name}/{key[0]}/{key[2]}", template["spec"]))
    (job,) = _load_yaml_docs(TEMPLATE)
    for role, replica in job["spec"]["pytorchReplicaSpecs"].items():
        pods.append((f"PyTorchJob/{role}", replica["template"]["spec"]))
    for doc in _load_yaml_docs(MANIFESTS / "tools" / "data-shell.yaml"):
        pods.append(("tools/data-shell", doc["spec"]))
    return pods


def restricted_problems(where: str, pod: dict) -> list[str]:
    """What breaks Pod Security "restricted" (and baseline): k8s-policy-guard's checks, and
    the fields issue 19 asks for, read strictly (pod level or every container)."""
    from policy_guard.analyzers import pod_security
    from policy_guard.models import PolicyLevel, Resource

    found = [
        f"{where}: {v.rule_id} {v.message}"
        for v in pod_security.analyze([Resource(kind="Pod", name=where, spec=pod)])
        if v.policy_level in (PolicyLevel.BASELINE, PolicyLevel.RESTRICTED)
    ]
    pod_context = pod.get("securityContext", {})
    for c in pod.get("initContainers", []) + pod["containers"]:
        context = c.get("securityContext", {})

        def effective(key: str, context=context):
            return context.get(key, pod_context.get(key))

        if effective("runAsNonRoot") is not True:
            found.append(f"{where}/{c['name']}: runAsNonRoot is not true")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            found.append(f"{where}/{c['name']}: seccompProfile is not RuntimeDefault")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}/{c['name']}: allowPrivilegeEscalation is not false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{where}/{c['name']}: capabilities do not drop ALL")
        # A read-only root filesystem, and a writable volume wherever the process writes.
        if context.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}/{c['name']}: the root filesystem is writable")
        mounts = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
        home = next((e["value"] for e in c.get("env", []) if e["name"] == "HOME"), "/tmp")
        for path in sorted({"/tmp", home} - mounts):
            found.append(f"{where}/{c['name']}: {path} is not a writable volume")
    return found


@pytest.mark.parametrize("where, pod", every_pod(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_pod_meets_pod_security_restricted(where, pod):
    assert restricted_problems(where, pod) == []
    assert pod.get("automountServiceAccountToken") is False, (
        f"{where}: mounts an API token it never uses"
    )


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
        (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "Escalation"),
        (lambda p: p["securityContext"].pop("seccompProfile"), "seccomp"),
        (lambda p: p["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda p: p.update(hostNetwork=True), "host networking"),
        (lambda p: p["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False), "writable"),
    ],
)  # fmt: skip
def test_restricted_check_catches_breakage(edit, expected):
    where, pod = next((w, p) for w, p in every_pod() if w.endswith("Deployment/spacenit-mlflow"))
    pod = copy.deepcopy(pod)
    edit(pod)
    problems = restricted_problems(where, pod)
    assert any(expected.lower() in p.lower() for p in problems), problems


def test_network_policies_fence_mlflow_and_its_database(overlay):
    _, objects = overlay
    mlflow_pods = _get(objects, "Deployment", "spacenit-mlflow")["spec"]["template"]["metadata"][
        "labels"
    ]
    postgres_pods = _get(objects, "StatefulSet", "spacenit-postgres")["spec"]["template"][
        "metadata"
    ]["labels"]
    mlflow = _get(objects, "NetworkPolicy", "spacenit-mlflow")["spec"]
    assert mlflow["podSelector"]["matchLabels"].items() <= mlflow_pods.items()
    (rule,) = mlflow["ingress"]
    assert rule["from"] == [{"podSelector": {}}]  # this namespace's pods: the pipeline's steps
    assert [p["port"] for p in rule["ports"]] == ["http"]
    postgres = _get(objects, "NetworkPolicy", "spacenit-postgres")["spec"]
    assert postgres["podSelector"]["matchLabels"].items() <= postgres_pods.items()
    (rule,) = postgres["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= mlflow_pods.items()
    assert not source["podSelector"]["matchLabels"].items() <= postgres_pods.items()
    assert [p["port"] for p in rule["ports"]] == ["postgres"]
    for policy in (mlflow, postgres):
        assert policy["policyTypes"] == ["Ingress"]


def test_prod_keeps_an_mlflow_replica_through_disruptions():
    objects = _by_key(render(OVERLAYS["prod"]))
    deployment = _get(objects, "Deployment", "spacenit-mlflow")
    budget = _get(objects, "PodDisruptionBudget", "spacenit-mlflow")["spec"]
    assert (
        budget["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert 1 <= budget["minAvailable"] < deployment["spec"]["replicas"]
    assert ("PodDisruptionBudget", "spacenit-mlflow") not in {
        (k, n) for k, _, n in _by_key(render(OVERLAYS["dev"]))
    }


def _secrets_table(markdown: str) -> dict[str, set[str]]:
    """docs/deploy.md's table of Secrets: each pod named in a row -> the Secrets the row gives it."""
    body = markdown.split("<!-- secrets-table -->")[1].split("<!-- /secrets-table -->")[0]
    table = {}
    for row in body.strip().splitlines()[2:]:
        pods, secrets = (cell.strip() for cell in row.strip("|").split("|"))
        names = set(re.findall(r"`([^`]+)`", secrets))
        for pod in re.findall(r"`([^`]+)`", pods) or [pods]:
            table[pod] = names
    return table


def _actual_secrets() -> dict[str, set[str]]:
    """What the compiled pipeline, the PyTorchJob template and the manifests give each pod."""
    pipeline = _pipeline()
    _, platform = yaml.safe_load_all(pipeline.DEFAULT_YAML.read_text())
    spec = next(yaml.safe_load_all(pipeline.DEFAULT_YAML.read_text()))
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    actual: dict[str, set[str]] = {}
    for label in spec["deploymentSpec"]["executors"]:
        step = re.sub(r"-\d+$", "", label.removeprefix("exec-"))
        actual.setdefault(step, set()).update(
            s["secretName"] for s in k8s.get(label, {}).get("secretAsEnv", [])
        )
    (job,) = _load_yaml_docs(TEMPLATE)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        for c in replica["template"]["spec"]["containers"]:
            actual.setdefault("PyTorchJob", set()).update(
                s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s
            )
    for path in OVERLAYS.values():
        objects = _by_key(render(path))
        for key, _ in _pod_specs(objects):
            actual.setdefault(f"{key[0]}/{key[2]}", set()).update(
                _referenced({key: objects[key]})["Secret"]
            )
    return actual


def test_deploy_doc_says_which_pods_see_which_secrets():
    documented = _secrets_table(DEPLOY_DOC.read_text())
    actual = _actual_secrets()
    # The steps' rows name them by step; "pretrain" covers the CPU and GPU steps.
    assert set(documented) == set(actual), set(documented) ^ set(actual)
    for pod, secrets in actual.items():
        assert documented[pod] == secrets, (
            f"{pod}: docs say {sorted(documented[pod])}, it gets {sorted(secrets)}"
        )

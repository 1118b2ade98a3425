"""Static checks of the container images: no Docker engine needed.

The Dockerfiles, images/constraints.txt, images/build.sh and docs/docker.md are checked
against the real package: its console script, its dependency ranges, its image names
(configuration: components/image.py) and its CLI parser. Each check is a function that
returns a list of problems; the `*_catch_*` tests feed it broken inputs to show it can fail.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import spacenit
from components.image import IMAGE, IMAGE_CUDA, IMAGE_REPOSITORY

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "images"
DOCKERFILES = {"cpu": IMAGES_DIR / "Dockerfile.cpu", "cuda": IMAGES_DIR / "Dockerfile.cuda"}
CONSTRAINTS = IMAGES_DIR / "constraints.txt"
BUILD_SH = IMAGES_DIR / "build.sh"
DOCS = REPO / "docs" / "docker.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

TORCH_VERSION = "2.13.0"
ENTRYPOINT = "spacenit"
VENV = "/opt/venv"
STAGES = ("convert", "stats", "pretrain", "embed", "probe")
# What each image is built on, and where its torch comes from.
EXPECTED = {
    "cpu": {"base": ("python:3.11", "slim"), "torch_index": "https://download.pytorch.org/whl/cpu"},
    "cuda": {
        "base": ("nvidia/cuda:12.8", "cudnn-runtime-ubuntu24.04"),
        "torch_index": "https://download.pytorch.org/whl/cu128",
    },
}
IMAGE_TAGS = {IMAGE, IMAGE_CUDA}


# --------------------------------------------------------------------------------------
# A small Dockerfile parser: logical lines (continuations joined, comments dropped) split
# into a keyword and its arguments; then stages split at FROM.
# --------------------------------------------------------------------------------------

KEYWORDS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
}  # fmt: skip


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuation lines joined by one space
    line: int  # physical line the instruction starts on

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's list, or None for the shell form."""
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DockerfileError(f"line {self.line}: {self.keyword} is not a JSON list of strings")
        return value

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """Leading `--name=value` flags, then the remaining words (shell-style quoting)."""
        words = self.exec_form() or shlex.split(self.args)
        flags = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words

    def assignments(self) -> dict[str, str]:
        """`KEY=VALUE ...` pairs of ENV/LABEL/ARG (quotes removed)."""
        pairs = {}
        for word in shlex.split(self.args):
            key, eq, value = word.partition("=")
            pairs[key] = value if eq else ""
        return pairs


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []  # pieces of the logical line being continued
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.replace(" ", "").startswith("#escape="):
            raise DockerfileError("the escape directive is not supported")
        # Comments and blank lines are dropped, inside a continuation too (as Docker does).
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if continued:
            continue
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        pending = []
        if keyword.upper() not in KEYWORDS:
            # Usually a continuation backslash missing on the line before.
            raise DockerfileError(f"line {start}: unknown instruction {keyword!r}")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise DockerfileError(f"line {start}: continuation runs past the end of the file")
    return instructions


def split_stages(instructions: list[Instruction]) -> list[Stage]:
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    head: tuple[str, str | None] = ("", None)
    for ins in instructions:
        if ins.keyword == "FROM":
            if current is not None:
                stages.append(Stage(*head, tuple(current)))
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if len(words) == 3 and words[1].upper() == "AS":
                head = (words[0], words[2])
            elif len(words) == 1:
                head = (words[0], None)
            else:
                raise DockerfileError(f"line {ins.line}: cannot read FROM {ins.args!r}")
            current = []
        elif current is None:
            if ins.keyword != "ARG":
                raise DockerfileError(f"line {ins.line}: {ins.keyword} before the first FROM")
        else:
            current.append(ins)
    if current is None:
        raise DockerfileError("no FROM")
    stages.append(Stage(*head, tuple(current)))
    return stages


# --------------------------------------------------------------------------------------
# Checks: each returns a list of problems (empty = fine)
# --------------------------------------------------------------------------------------


def _pinned_by_tag(image: str) -> bool:
    image, _, digest = image.partition("@")
    if digest:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def _is_root(user: str) -> bool:
    return user.split(":")[0] in {"root", "0", ""}


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The defaults of the ARGs declared before the first FROM (what FROM lines may use)."""
    args = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        args.update(ins.assignments())
    return args


def resolved(value: str, args: dict[str, str]) -> str:
    """`value` with $NAME / ${NAME} replaced by the ARG defaults."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def dockerfile_problems(text: str, kind: str) -> list[str]:
    try:
        instructions = parse_dockerfile(text)
        stages = split_stages(instructions)
    except (DockerfileError, ValueError) as e:  # JSONDecodeError and shlex errors included
        return [f"does not parse: {e}"]
    problems: list[str] = []
    defaults = global_args(instructions)
    if "BASE_IMAGE" not in defaults:
        problems.append("no global `ARG BASE_IMAGE=...`: the base must be a build argument")
    expected = EXPECTED[kind]
    builder = next((s for s in stages if s.name == "builder"), None)
    final = stages[-1]
    if len(stages) < 2 or builder is None or builder is final:
        problems.append("not multi-stage with a `FROM ... AS builder` stage before the final one")

    # Bases: pinned, the expected family, and the same interpreter in both stages
    # (the venv copied from the builder points at the base's python).
    prefix, suffix = expected["base"]
    final_base = resolved(final.base, defaults)
    if not (final_base.startswith(prefix) and suffix in final_base):
        problems.append(f"final base {final_base!r} is not {prefix}...{suffix}")
    for stage in stages:
        if not _pinned_by_tag(resolved(stage.base, defaults)):
            problems.append(
                f"base {resolved(stage.base, defaults)!r} is not pinned by a version tag"
            )
    if builder is not None and builder.base != final.base:
        problems.append(f"builder base {builder.base!r} != final base {final.base!r}")

    # Final stage: non-root numeric USER (Kubernetes runAsNonRoot can only verify a
    # number), WORKDIR, entrypoint, the venv from the builder first on PATH.
    user = final.last("USER")
    if user is None:
        problems.append("final stage has no USER (would run as root)")
    elif _is_root(user.args):
        problems.append(f"final stage runs as root (USER {user.args})")
    elif not user.args.split(":")[0].isdigit():
        problems.append(f"USER {user.args} is not numeric (runAsNonRoot cannot verify it)")
    workdir = final.last("WORKDIR")
    if workdir is None or workdir.args != "/work":
        problems.append("final stage WORKDIR is not /work")
    entrypoint = final.last("ENTRYPOINT")
    if entrypoint is None or entrypoint.exec_form() != [ENTRYPOINT]:
        problems.append(f'final stage ENTRYPOINT is not ["{ENTRYPOINT}"]')
    cmd = final.last("CMD")
    if cmd is None or cmd.exec_form() != ["--help"]:
        problems.append('final stage CMD is not ["--help"]')
    venv_copies = [
        c for c in final.all("COPY")
        if c.flags_and_words()[0].get("from") == "builder" and c.flags_and_words()[1] == [VENV, VENV]
    ]  # fmt: skip
    if not venv_copies:
        problems.append(f"final stage does not COPY --from=builder {VENV} {VENV}")
    paths = [i.assignments()["PATH"] for i in final.all("ENV") if "PATH" in i.assignments()]
    if not paths or not paths[-1].startswith(f"{VENV}/bin:"):
        problems.append(f"final stage PATH does not start with {VENV}/bin (KFP runs python3)")

    # Version label from the build arg, which must be declared in the final stage
    # (ARGs do not cross FROM).
    arg_line = next(
        (i.line for i in final.all("ARG") if i.args.split("=")[0] == "SPACENIT_VERSION"), None
    )
    label_line = next(
        (
            i.line for i in final.all("LABEL")
            if i.assignments().get("org.opencontainers.image.version") == "${SPACENIT_VERSION}"
        ),
        None,
    )  # fmt: skip
    if label_line is None:
        problems.append("no LABEL org.opencontainers.image.version=${SPACENIT_VERSION}")
    elif arg_line is None or arg_line > label_line:
        problems.append("ARG SPACENIT_VERSION is not declared in the final stage before its LABEL")

    # Builder: torch from the right PyTorch index (a build argument) first, then the package
    # with constraints; both from the `wheels` build context when it holds wheels (offline).
    builder_args = {}
    for ins in builder.all("ARG") if builder else []:
        builder_args.update(ins.assignments())
    if builder_args.get("TORCH_INDEX") != expected["torch_index"]:
        problems.append(f"builder has no `ARG TORCH_INDEX={expected['torch_index']}`")
    runs = [i.args for i in (builder.all("RUN") if builder else [])]
    torch_runs = [r for r in runs if '--index-url "$TORCH_INDEX"' in r]
    package_runs = [r for r in runs if "pip install -c /src/images/constraints.txt" in r]
    if not torch_runs:
        problems.append(f"builder does not install torch from {expected['torch_index']}")
    if not package_runs:
        problems.append("builder does not pip install the package with -c images/constraints.txt")
    if torch_runs and package_runs and runs.index(torch_runs[0]) > runs.index(package_runs[0]):
        problems.append("torch is installed after the package (pip would take torch from PyPI)")
    if any(re.search(r"torch==\d", r) for r in runs):
        problems.append("torch version typed in the Dockerfile (read it from constraints.txt)")
    for r in torch_runs[:1] + package_runs[:1]:
        if (
            "--mount=type=bind,from=wheels,target=/wheels" not in r
            or "/wheels" not in r.split("set -eu", 1)[-1]
        ):
            problems.append(
                "a pip install does not take the `wheels` build context (offline builds)"
            )
    return problems


def copy_sources(text: str) -> list[str]:
    """Build-context paths the Dockerfile copies (COPY/ADD without --from)."""
    sources = []
    for ins in parse_dockerfile(text):
        if ins.keyword in {"COPY", "ADD"}:
            flags, words = ins.flags_and_words()
            if "from" not in flags:
                sources.extend(words[:-1])
    return sources


def missing_copy_sources(text: str, context: Path = REPO) -> list[str]:
    missing = []
    for source in copy_sources(text):
        if any(c in source for c in "*?["):
            found = any(context.glob(source))
        else:
            found = (context / source).exists()
        if not found:
            missing.append(source)
    return missing


def _glob_segments(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_glob_segments(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return (
        bool(path)
        and fnmatch.fnmatchcase(path[0], pattern[0])
        and _glob_segments(pattern[1:], path[1:])
    )


def dockerignored(dockerignore: str, path: str) -> bool:
    """Whether .dockerignore rules exclude `path` (or a parent of it); last match wins."""
    excluded = False
    parts = path.split("/")
    for raw in dockerignore.splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = os.path.normpath(rule.lstrip("!").strip()).strip("/").split("/")
        if any(_glob_segments(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def read_pins(text: str) -> tuple[dict[str, Requirement], list[str]]:
    pins: dict[str, Requirement] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            problems.append(f"line {number}: {e}")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"line {number}: {line!r} is not an exact == pin")
            continue
        if Version(specs[0].version).local:
            # torch==2.13.0+cpu would break the cu128 image; 2.13.0 matches both builds.
            problems.append(f"line {number}: {line!r} pins a local version label")
        name = canonicalize_name(req.name)
        if name in pins:
            problems.append(f"line {number}: {req.name} pinned twice")
        pins[name] = req
    return pins, problems


def constraint_problems(text: str, dependencies: list[str]) -> list[str]:
    pins, problems = read_pins(text)
    for dep in map(Requirement, dependencies):
        pin = pins.get(canonicalize_name(dep.name))
        if pin is None:
            problems.append(f"{dep.name} (a pyproject dependency) is not pinned")
            continue
        version = next(iter(pin.specifier)).version
        if not dep.specifier.contains(version, prereleases=True):
            problems.append(f"{pin} does not satisfy pyproject's {dep}")
    torch = pins.get("torch")
    if torch is None or str(torch.specifier) != f"=={TORCH_VERSION}":
        problems.append(f"torch is not pinned to =={TORCH_VERSION}")
    return problems


IMAGE_REF = re.compile(r"ghcr\.io/[\w./-]+(?::[\w.-]+)?")


def image_reference_problems(text: str, where: str) -> list[str]:
    """Every ghcr.io reference must be one of the package's names, not a hand-typed tag."""
    allowed = IMAGE_TAGS | {IMAGE_REPOSITORY}
    found = {ref.rstrip(".") for ref in IMAGE_REF.findall(text)}
    return [
        f"{where}: {ref} is not the configured IMAGE / IMAGE_CUDA"
        for ref in sorted(found - allowed)
    ]


def docker_run_commands(markdown: str) -> list[list[str]]:
    """The `docker run ...` lines of the docs, split into words."""
    return [
        shlex.split(line)
        for line in markdown.splitlines()
        if line.strip().startswith("docker run ")
    ]


def docs_problems(markdown: str) -> list[str]:
    problems = image_reference_problems(markdown, "docs/docker.md")
    if IMAGE not in markdown:
        problems.append(f"docs do not name {IMAGE}")
    if "MLFLOW_TRACKING_URI" not in markdown:
        problems.append("docs do not mention MLFLOW_TRACKING_URI")
    covered = set()
    for words in docker_run_commands(markdown):
        image = next((w for w in words if w in IMAGE_TAGS), None)
        if image is None:
            problems.append(f"`{shlex.join(words)}` runs no spacenit image")
            continue
        options = words[: words.index(image)]
        if not any(o.endswith(":/data") for o in options):
            problems.append(f"`{shlex.join(words)}` mounts nothing at /data")
        args = words[words.index(image) + 1 :]
        if args:
            covered.add(args[0])
    problems += [f"no `docker run` line for stage {s}" for s in STAGES if s not in covered]
    return problems


# --------------------------------------------------------------------------------------
# The parser itself
# --------------------------------------------------------------------------------------


def test_parser_joins_continuations_and_drops_comments():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.11-slim\n"
        "FROM $BASE AS builder\n"
        "RUN set -eu; \\\n"
        "    # a comment inside the continuation\n"
        "    echo one; \\\n"
        "\n"
        "    echo two\n"
        'ENTRYPOINT ["spacenit"]\n'
        "from scratch\n"
        "COPY --from=builder --chown=1000:1000 /a /b\n"
    )
    ins = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in ins] == [
        ("ARG", 2), ("FROM", 3), ("RUN", 4), ("ENTRYPOINT", 9), ("FROM", 10), ("COPY", 11),
    ]  # fmt: skip
    assert ins[2].args == "set -eu; echo one; echo two"
    assert ins[3].exec_form() == ["spacenit"]
    assert ins[5].flags_and_words() == ({"from": "builder", "chown": "1000:1000"}, ["/a", "/b"])
    stages = split_stages(ins)
    assert [(s.base, s.name) for s in stages] == [("$BASE", "builder"), ("scratch", None)]


@pytest.mark.parametrize(
    "text",
    [
        "FROM a:1\nRUN echo \\\n",  # continuation at end of file
        "FROM a:1\nRUN echo one\n    && echo two\n",  # forgotten backslash
        "RUN echo before any FROM\n",
        'FROM a:1\nENTRYPOINT ["spacenit"\n',  # broken JSON
    ],
)
def test_parser_rejects_malformed_dockerfiles(text):
    with pytest.raises(ValueError):
        split_stages(parse_dockerfile(text))
        for ins in parse_dockerfile(text):
            ins.exec_form()


# --------------------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile(kind):
    assert dockerfile_problems(DOCKERFILES[kind].read_text(), kind) == []


# Edits of the real CPU Dockerfile: (old, new, words of the problem that must be reported).
BREAKAGES = {
    "no USER": ("USER 1000:1000\n", "", "no USER"),
    "USER root": ("USER 1000:1000", "USER root", "runs as root"),
    "USER 0": ("USER 1000:1000", "USER 0:0", "runs as root"),
    "USER by name": ("USER 1000:1000", "USER spacenit", "not numeric"),
    "single stage": (" AS builder", "", "multi-stage"),
    "other entrypoint": ('ENTRYPOINT ["spacenit"]', 'ENTRYPOINT ["python", "-m", "spacenit"]', "ENTRYPOINT"),
    "shell-form entrypoint": ('ENTRYPOINT ["spacenit"]', "ENTRYPOINT spacenit", "ENTRYPOINT"),
    "no CMD": ('CMD ["--help"]\n', "", "CMD"),
    "no WORKDIR": ("WORKDIR /work\n", "", "WORKDIR"),
    "unpinned base": ("ARG BASE_IMAGE=python:3.11.13-slim-bookworm", "ARG BASE_IMAGE=python:slim", "not pinned"),
    "base not an argument": ("ARG BASE_IMAGE=python:3.11.13-slim-bookworm", "ARG OTHER=x", "ARG BASE_IMAGE"),
    "different bases": ("\nFROM ${BASE_IMAGE}\n", "\nFROM python:3.11.14-slim-bookworm\n", "!= final base"),
    "ARG only in builder": ("# ARGs do not cross stages: declare again for the labels.\nARG SPACENIT_VERSION\n", "", "ARG SPACENIT_VERSION"),
    "no version label": ('org.opencontainers.image.version="${SPACENIT_VERSION}"', 'org.opencontainers.image.version="0.1.0"', "LABEL"),
    "torch from PyPI": ('--index-url "$TORCH_INDEX" ', "", "install torch from"),
    "another torch index": ("ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu", "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128", "TORCH_INDEX"),
    "no offline wheels": ("    --mount=type=bind,from=wheels,target=/wheels \\\n    set -eu; \\\n    torch_pin", "    set -eu; \\\n    torch_pin", "wheels"),
    "torch typed by hand": ('"$torch_pin"', "torch==2.13.0", "torch version typed"),
    "no constraints": ("pip install -c /src/images/constraints.txt", "pip install", "-c images/constraints.txt"),
    "venv not copied": ("COPY --from=builder /opt/venv /opt/venv", "COPY --from=builder /opt/venv /usr/local", "COPY --from=builder"),
    "venv not on PATH": ("PATH=/opt/venv/bin:$PATH", "PATH=$PATH:/opt/venv/bin", "PATH"),
    "missing backslash": ("set -eu; \\\n    torch_pin", "set -eu;\n    torch_pin", "does not parse"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_dockerfile_checks_catch_breakage(name):
    old, new, expected = BREAKAGES[name]
    text = DOCKERFILES["cpu"].read_text()
    assert old in text, f"breakage {name!r} no longer applies to Dockerfile.cpu"
    assert dockerfile_problems(text, "cpu") == []
    problems = dockerfile_problems(text.replace(old, new), "cpu")
    assert any(expected in p for p in problems), problems


def test_cuda_checks_reject_the_cpu_dockerfile():
    # The per-kind expectations differ: base image and torch index.
    assert dockerfile_problems(DOCKERFILES["cpu"].read_text(), "cuda") != []


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_copied_files_exist(kind):
    text = DOCKERFILES[kind].read_text()
    assert copy_sources(text), "the Dockerfile copies nothing from the build context"
    assert missing_copy_sources(text) == []


def test_copy_check_catches_a_missing_file():
    text = DOCKERFILES["cpu"].read_text() + "COPY images/no-such-file.txt /src/\n"
    assert missing_copy_sources(text) == ["images/no-such-file.txt"]


def dockerignored_sources(rules: str, dockerfile_text: str) -> list[str]:
    """Files under the Dockerfile's COPY sources that .dockerignore `rules` drop."""
    excluded = []
    for source in copy_sources(dockerfile_text):
        root = REPO / source
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if "__pycache__" not in rel and dockerignored(rules, rel):
                excluded.append(rel)
    return excluded


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_copied_files_are_not_dockerignored(kind):
    ignore_file = REPO / ".dockerignore"
    if not ignore_file.exists():
        pytest.skip("no .dockerignore")
    text = DOCKERFILES[kind].read_text()
    assert dockerignored_sources(ignore_file.read_text(), text) == [], (
        "the Dockerfile needs these; .dockerignore drops them"
    )


def test_dockerignore_check_catches_an_excluded_source():
    text = DOCKERFILES["cpu"].read_text()
    assert dockerignored_sources(".venv\ntests/\n", text) == []
    assert dockerignored_sources("*.toml\n", text) == ["pyproject.toml"]
    assert "spacenit/cli.py" in dockerignored_sources("spacenit/**/*.py\n", text)
    assert dockerignored_sources("images\n!images/constraints.txt\n!images/slim.sh\n", text) == []


def test_dockerignore_matcher():
    rules = "**/__pycache__\n.venv\n*.md\n!README.md\ndata/\n"
    assert dockerignored(rules, ".venv/bin/python")
    assert dockerignored(rules, "spacenit/__pycache__/x.pyc")
    assert dockerignored(rules, "CHANGES.md")
    assert not dockerignored(rules, "README.md")
    assert dockerignored(rules, "data/a.tif")
    assert not dockerignored(rules, "spacenit/cli.py")


# --------------------------------------------------------------------------------------
# The entrypoint is the package's console script
# --------------------------------------------------------------------------------------


def test_entrypoint_is_the_packages_console_script():
    scripts = [
        ep
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == ENTRYPOINT
    ]
    assert len(scripts) == 1, f"console script {ENTRYPOINT!r}: {scripts}"
    (script,) = scripts
    assert canonicalize_name(script.dist.name) == "spacenit"
    # The installed metadata agrees with pyproject (a stale editable install would not).
    assert PYPROJECT["project"]["scripts"][ENTRYPOINT] == script.value
    assert callable(script.load())
    for kind, path in DOCKERFILES.items():
        entrypoint = split_stages(parse_dockerfile(path.read_text()))[-1].last("ENTRYPOINT")
        assert entrypoint.exec_form()[0] == script.name, kind


def test_kfp_executor_is_importable():
    # KFP runs `python3 -m kfp.dsl.executor_main` in the image; kfp is a package dependency.
    names = {canonicalize_name(Requirement(d).name) for d in PYPROJECT["project"]["dependencies"]}
    assert "kfp" in names
    assert importlib.util.find_spec("kfp.dsl.executor_main") is not None


# --------------------------------------------------------------------------------------
# constraints.txt against pyproject
# --------------------------------------------------------------------------------------


def test_constraints_pin_every_dependency_within_its_range():
    assert constraint_problems(CONSTRAINTS.read_text(), PYPROJECT["project"]["dependencies"]) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("\nnumpy==", "\nnumpy==1.0.0\n# "),  # outside numpy>=1.26
        ("\nkfp==", "\n# kfp=="),  # a dependency left unpinned
        (f"\ntorch=={TORCH_VERSION}", "\ntorch==2.12.0"),
        (f"\ntorch=={TORCH_VERSION}", f"\ntorch=={TORCH_VERSION}+cpu"),
        ("\nzarr==", "\nzarr>=3\n# "),  # a range, not a pin
        ("\nh5py==", "\nh5py==3.16.0\nh5py=="),  # pinned twice
    ],
)
def test_constraint_checks_catch_breakage(old, new):
    text = CONSTRAINTS.read_text()
    assert old in text
    problems = constraint_problems(text.replace(old, new, 1), PYPROJECT["project"]["dependencies"])
    assert problems != []


def installed_closure(root: str, extras: frozenset[str]) -> dict[str, list[Requirement]]:
    """Every distribution `root[extras]` pulls in here -> the requirements placed on it.

    Walks the installed metadata, evaluating markers for this interpreter and the
    extras asked for (the image's Python may differ: 3.11 CPU, 3.12 CUDA).
    """
    wanted: dict[str, list[Requirement]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, extras)]
    while todo:
        name, asked = todo.pop()
        if (canonicalize_name(name), asked) in seen:
            continue
        seen.add((canonicalize_name(name), asked))
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in asked or {""}):
                continue
            wanted.setdefault(canonicalize_name(req.name), []).append(req)
            todo.append((req.name, frozenset(req.extras)))
    return wanted


def lock_problems(text: str, closure: dict[str, list[Requirement]]) -> list[str]:
    """The constraints as a lock: every package of the closure pinned, at a version its dependents accept."""
    pins, problems = read_pins(text)
    for name, reqs in sorted(closure.items()):
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{name} (needed by {reqs[0]}) is not pinned")
            continue
        version = next(iter(pin.specifier)).version
        problems += [
            f"{pin} does not satisfy {req}"
            for req in reqs
            if not req.specifier.contains(version, prereleases=True)
        ]
    return problems


def test_constraints_lock_the_whole_runtime_closure():
    # What the CPU image installs: the package and its `server` extra, with every dependency.
    closure = installed_closure("spacenit", frozenset({"server"}))
    assert {"mlflow", "kfp", "boto3", "botocore", "psycopg2-binary", "sqlalchemy"} <= set(closure)
    assert lock_problems(CONSTRAINTS.read_text(), closure) == []


def test_lock_check_catches_a_gap_and_a_conflict():
    closure = installed_closure("spacenit", frozenset({"server"}))
    text = CONSTRAINTS.read_text()
    assert any(
        "botocore" in p
        for p in lock_problems(text.replace("\nbotocore==", "\n# botocore=="), closure)
    )
    assert any(
        "does not satisfy" in p
        for p in lock_problems(text.replace("\nbotocore==1.44.8", "\nbotocore==1.0.0"), closure)
    )


# --------------------------------------------------------------------------------------
# Image names: configuration (components/image.py), defined once
# --------------------------------------------------------------------------------------


def test_no_hand_typed_image_tags():
    files = sorted(p for p in IMAGES_DIR.rglob("*") if p.is_file()) + [DOCS]
    problems = []
    for path in files:
        problems += image_reference_problems(path.read_text(), str(path.relative_to(REPO)))
    assert problems == []
    # build.sh reads the tags from the configuration rather than naming them at all.
    assert "ghcr.io" not in BUILD_SH.read_text()


def test_docs_use_the_package_image_names():
    assert docs_problems(DOCS.read_text()) == []


def test_docs_checks_catch_a_stale_tag():
    text = DOCS.read_text()
    assert docs_problems(text.replace(IMAGE, "ghcr.io/spacenit/spacenit:9.9.9")) != []
    assert docs_problems(text.replace(" probe ", " prob ")) != []


def test_docs_commands_parse_with_the_real_cli():
    cli = pytest.importorskip("spacenit.cli")
    parser_factory = getattr(cli, "_parser", None)
    if parser_factory is None:
        pytest.skip("spacenit.cli has no _parser() to check the commands against")
    for words in docker_run_commands(DOCS.read_text()):
        image = next(w for w in words if w in IMAGE_TAGS)
        args = words[words.index(image) + 1 :]
        try:
            parser_factory().parse_args(args)
        except SystemExit as e:
            pytest.fail(f"`spacenit {shlex.join(args)}` does not parse ({e})")


# --------------------------------------------------------------------------------------
# build.sh, run against a fake engine that records its arguments
# --------------------------------------------------------------------------------------


def _fake_engine(bin_dir: Path, name: str, log: Path, daemon: bool = True) -> None:
    """A stand-in engine that records its arguments; `docker info` fails without a daemon."""
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv) + '\\n')\n"
        "if sys.argv[1] == 'build':\n"
        "    opts = sys.argv[2:]\n"
        "    context = [o.split('=', 1)[1] for o in opts if o.startswith('wheels=')]\n"
        "    assert os.path.isdir(context[0]), context\n"
        f"sys.exit(0 if sys.argv[1] != 'info' or {daemon} else 1)\n"
    )
    fake.chmod(0o755)


def _run_build_sh(tmp_path: Path, engines: dict[str, bool], path_dirs: list[str], *args: str,
                  env: dict | None = None, check: bool = True) -> list[list[str]]:  # fmt: skip
    """Run build.sh with fake engines ({name: daemon answers}) first on PATH; their calls."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    for name, daemon in engines.items():
        _fake_engine(bin_dir, name, log, daemon)
    run_env = {k: v for k, v in os.environ.items()
               if k not in {"CONTAINER_ENGINE", "PUSH", "BASE_IMAGE", "TORCH_INDEX", "WHEELS", "SPACENIT_IMAGE_REPOSITORY"}}  # fmt: skip
    run_env.update(
        PATH=os.pathsep.join([str(bin_dir), *path_dirs]), PYTHON=sys.executable, **(env or {})
    )
    done = subprocess.run(
        ["bash", str(BUILD_SH), *args], cwd=tmp_path, env=run_env, capture_output=True, text=True
    )
    if check:
        assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _build_calls(calls: list[list[str]]) -> dict[str, dict[str, object]]:
    out = {}
    for argv in calls:
        if argv[1] != "build":
            continue
        assert argv[-1] == "."
        opts = argv[2:-1]
        tag = opts[opts.index("--tag") + 1]
        build_args = [opts[i + 1] for i, o in enumerate(opts) if o == "--build-arg"]
        contexts = [opts[i + 1] for i, o in enumerate(opts) if o == "--build-context"]
        out[tag] = {"engine": Path(argv[0]).name, "file": opts[opts.index("--file") + 1],
                    "build_args": build_args, "contexts": contexts}  # fmt: skip
    return out


#: What build.sh runs besides an engine: linked into a folder that is the rest of PATH, so
#: the engines installed on this machine stay out of sight.
TOOLS = ["bash", "dirname", "mktemp", "rmdir", "date", "git", "sed", "cat"]


@pytest.fixture
def tools(tmp_path) -> list[str]:
    folder = tmp_path / "tools"
    folder.mkdir()
    for name in TOOLS:
        if shutil.which(name):
            (folder / name).symlink_to(shutil.which(name))
    return [str(folder)]


needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@needs_bash
def test_build_sh_tags_from_the_configuration(tmp_path):
    calls = _build_calls(
        _run_build_sh(tmp_path, {"docker": True}, os.environ["PATH"].split(os.pathsep))
    )
    assert set(calls) == IMAGE_TAGS
    assert calls[IMAGE]["file"] == "images/Dockerfile.cpu"
    assert calls[IMAGE_CUDA]["file"] == "images/Dockerfile.cuda"
    for call in calls.values():
        assert call["engine"] == "docker"
        assert f"SPACENIT_VERSION={spacenit.__version__}" in call["build_args"]
        # No base or index given: the Dockerfiles' defaults hold.
        assert not any(a.startswith(("BASE_IMAGE=", "TORCH_INDEX=")) for a in call["build_args"])


@needs_bash
def test_the_image_repository_is_configuration(tmp_path, tools):
    assert IMAGE_REPOSITORY == PYPROJECT["tool"]["spacenit"]["image-repository"]
    assert IMAGE == f"{IMAGE_REPOSITORY}:{spacenit.__version__}" and IMAGE_CUDA == f"{IMAGE}-cuda"
    env = {"SPACENIT_IMAGE_REPOSITORY": "registry.example.internal/team/spacenit"}
    calls = _build_calls(_run_build_sh(tmp_path, {"docker": True}, tools, "cpu", env=env))
    assert list(calls) == [f"registry.example.internal/team/spacenit:{spacenit.__version__}"]


@needs_bash
@pytest.mark.parametrize("engines, expected", [
    ({"docker": False, "podman": True}, "podman"),  # a docker client without a daemon
    ({"podman": True}, "podman"),
    ({"docker": False, "buildah": True}, "buildah"),
])  # fmt: skip
def test_build_sh_needs_no_docker_engine(tmp_path, tools, engines, expected):
    calls = _run_build_sh(tmp_path, engines, tools, "cuda")
    assert [Path(c[0]).name for c in calls if c[1] == "build"] == [expected]
    assert list(_build_calls(calls)) == [IMAGE_CUDA]


@needs_bash
def test_build_sh_passes_base_index_and_wheels(tmp_path, tools):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env = {
        "BASE_IMAGE": "localhost/spacenit-base:bookworm",
        "TORCH_INDEX": "file:///mirror/torch",
        "WHEELS": str(wheels),
    }
    calls = _build_calls(
        _run_build_sh(tmp_path, {"docker": True}, tools, "cpu", "--", "--network", "none", env=env)
    )
    call = calls[IMAGE]
    assert "BASE_IMAGE=localhost/spacenit-base:bookworm" in call["build_args"]
    assert "TORCH_INDEX=file:///mirror/torch" in call["build_args"]
    assert call["contexts"] == [f"wheels={wheels}"]
    # Without WHEELS the context is an empty folder, so the Dockerfiles use the indexes.
    (tmp_path / "calls.jsonl").unlink()
    calls = _build_calls(_run_build_sh(tmp_path, {"docker": True}, tools, "cpu"))
    (context,) = calls[IMAGE]["contexts"]
    assert (
        context.startswith("wheels=") and not Path(context.split("=", 1)[1]).exists()
    )  # removed after


@needs_bash
def test_build_sh_refuses_a_wheels_path_that_is_no_folder(tmp_path, tools):
    (tmp_path / "w.txt").write_text("")
    calls = _run_build_sh(tmp_path, {"docker": True}, tools, "cpu", env={"WHEELS": str(tmp_path / "w.txt")},
                          check=False)  # fmt: skip
    assert _build_calls(calls) == {}


def test_image_test_is_a_make_target_outside_make_test():
    """`make image-test` builds and runs the image (slow): its own target, never under `make test`."""
    makefile = (REPO / "Makefile").read_text()
    rules = dict(re.findall(r"^([\w-]+):(.*)$", makefile, flags=re.M))
    assert "image-test" in rules and "images/image-test.sh" in makefile
    assert "image-test" not in rules["test"] and "image-test" not in rules.get("lint", "")
    script = (IMAGES_DIR / "image-test.sh").read_text()
    for verb in (
        "convert",
        "stats",
        "pretrain",
        "embed models:/spacenit-encoder@champion",
        "probe",
        "mlflow server",
    ):
        assert verb in script, verb
    assert "--network none" in script and "/health" in script

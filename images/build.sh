#!/usr/bin/env bash
# Build the spacenit container images, with Docker, Podman or Buildah.
#
#   images/build.sh [cpu] [cuda] [-- EXTRA BUILD ARGS...]     (default: both)
#
# Tags are never typed here: they come from the configuration (components/image.py:
# $SPACENIT_IMAGE_REPOSITORY, else pyproject.toml's [tool.spacenit] image-repository,
# tagged with spacenit.__version__, `-cuda` for the CUDA image).
#
# Environment:
#   CONTAINER_ENGINE  docker, podman or buildah (default: docker when its daemon answers,
#                     else podman, else buildah)
#   BASE_IMAGE        base of both stages (default: the Dockerfile's; images/local-base.sh
#                     makes one from Debian packages)
#   TORCH_INDEX       the index torch comes from (default: the Dockerfile's PyTorch index)
#   WHEELS            a folder of wheels: every pip install takes its packages from there
#                     alone (an offline build, e.g. with --network none after --)
#   PYTHON            interpreter that reads the names (default: .venv/bin/python, python3)
#   PUSH=1            push each image after building it
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

targets=()
extra_args=()
while (($#)); do
    case "$1" in
        cpu | cuda) targets+=("$1") ;;
        --) shift; extra_args=("$@"); break ;;
        -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (expected cpu, cuda, or -- ARGS)" >&2; exit 2 ;;
    esac
    shift
done
((${#targets[@]})) || targets=(cpu cuda)

engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
    # A docker client without a daemon (common on build hosts) cannot build: ask it.
    if command -v docker > /dev/null 2>&1 && docker info > /dev/null 2>&1; then
        engine=docker
    elif command -v podman > /dev/null 2>&1; then
        engine=podman
    elif command -v buildah > /dev/null 2>&1; then
        engine=buildah
    else
        echo "build.sh: no container engine: install podman or buildah (Debian packages), or start docker" >&2
        exit 1
    fi
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

# Read the names from this checkout (its components/ and spacenit/), not an installed copy.
image_name() {
    PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m components.image "$1"
}
version="$(PYTHONPATH="$repo_root" "$python" -c 'import spacenit; print(spacenit.__version__)')"
vcs_ref="$(git rev-parse HEAD 2> /dev/null || echo unknown)"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

build_args=(--build-arg "SPACENIT_VERSION=$version" --build-arg "VCS_REF=$vcs_ref" --build-arg "BUILD_DATE=$build_date")
[[ -n "${BASE_IMAGE:-}" ]] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[[ -n "${TORCH_INDEX:-}" ]] && build_args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
# The Dockerfiles mount the build context `wheels`: the given folder, or an empty one.
wheels="${WHEELS:-}"
if [[ -z "$wheels" ]]; then
    wheels="$(mktemp -d)"
    trap 'rmdir "$wheels"' EXIT
elif [[ ! -d "$wheels" ]]; then
    echo "build.sh: WHEELS=$wheels is not a directory" >&2
    exit 2
fi
wheels="$(cd "$wheels" && pwd)"

for target in "${targets[@]}"; do
    tag="$(image_name "$target")"
    echo ">> $engine build $tag (images/Dockerfile.$target)" >&2
    "$engine" build \
        --file "images/Dockerfile.$target" \
        --tag "$tag" \
        "${build_args[@]}" \
        --build-context "wheels=$wheels" \
        ${extra_args[@]+"${extra_args[@]}"} \
        .
    if [[ "${PUSH:-0}" == 1 ]]; then
        "$engine" push "$tag"
    fi
done

#!/usr/bin/env bash
# Build the spacenit container images.
#
#   images/build.sh [cpu] [cuda] [-- EXTRA BUILD ARGS...]     (default: both)
#
# Tags are never typed here: they come from the package (spacenit.IMAGE for the CPU
# image, spacenit.IMAGE_CUDA for the CUDA one, both derived from spacenit.__version__),
# read from this checkout, so a version bump in spacenit/__init__.py retags everything.
#
# Environment:
#   CONTAINER_ENGINE  docker or podman (default: docker if installed, else podman)
#   PYTHON            interpreter used to read the tags (default: .venv/bin/python, python3)
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
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (expected cpu, cuda, or -- ARGS)" >&2; exit 2 ;;
    esac
    shift
done
((${#targets[@]})) || targets=(cpu cuda)

engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
    if command -v docker > /dev/null 2>&1; then
        engine=docker
    elif command -v podman > /dev/null 2>&1; then
        engine=podman
    else
        echo "build.sh: neither docker nor podman found (set CONTAINER_ENGINE)" >&2
        exit 1
    fi
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

# Read the names from this checkout's package (PYTHONPATH first), not an installed copy.
package_attr() {
    PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}" \
        "$python" -c "import spacenit; print(spacenit.$1)"
}
version="$(package_attr __version__)"
vcs_ref="$(git rev-parse HEAD 2> /dev/null || echo unknown)"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

for target in "${targets[@]}"; do
    case "$target" in
        cpu) tag="$(package_attr IMAGE)" ;;
        cuda) tag="$(package_attr IMAGE_CUDA)" ;;
    esac
    echo ">> $engine build $tag (images/Dockerfile.$target)" >&2
    "$engine" build \
        --file "images/Dockerfile.$target" \
        --tag "$tag" \
        --build-arg "SPACENIT_VERSION=$version" \
        --build-arg "VCS_REF=$vcs_ref" \
        --build-arg "BUILD_DATE=$build_date" \
        ${extra_args[@]+"${extra_args[@]}"} \
        .
    if [[ "${PUSH:-0}" == 1 ]]; then
        "$engine" push "$tag"
    fi
done

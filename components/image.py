"""The container images the pipeline's steps run in: configuration, not a constant in code.

The repository (registry and name) is `$SPACENIT_IMAGE_REPOSITORY` when set, else
`[tool.spacenit] image-repository` in pyproject.toml; the tag is the package version
(`spacenit.__version__`), `-cuda` added for the CUDA image. images/build.sh tags what it
builds with these names (it prints them with `python -m components.image`), the pipeline
compiles them in, and tests/test_manifests.py checks that the manifests' kustomization
names the same image.
"""

import os
import sys
import tomllib
from pathlib import Path

import spacenit

REPOSITORY_ENV = "SPACENIT_IMAGE_REPOSITORY"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def image_repository() -> str:
    """$SPACENIT_IMAGE_REPOSITORY, else pyproject.toml's [tool.spacenit] image-repository."""
    configured = os.environ.get(REPOSITORY_ENV, "").strip()
    if configured:
        return configured
    try:
        return tomllib.loads(PYPROJECT.read_text())["tool"]["spacenit"]["image-repository"]
    except (FileNotFoundError, KeyError):
        raise RuntimeError(
            f"no image repository: set ${REPOSITORY_ENV} (e.g. registry.example.com/team/spacenit) "
            f"or `[tool.spacenit] image-repository` in {PYPROJECT}"
        ) from None


IMAGE_REPOSITORY = image_repository()
#: The CPU image: every step but GPU pretraining, and the MLflow server.
IMAGE = f"{IMAGE_REPOSITORY}:{spacenit.__version__}"
#: The CUDA image: pretraining on GPUs.
IMAGE_CUDA = f"{IMAGE}-cuda"

if __name__ == "__main__":
    # `python -m components.image cpu|cuda`: the tag images/build.sh gives what it builds.
    names = {"cpu": IMAGE, "cuda": IMAGE_CUDA}
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        sys.exit("usage: python -m components.image cpu|cuda")
    print(names[sys.argv[1]])

"""KFP component that fingerprints the pipeline's input directory, so `convert`'s cache key follows its content.

Never cached itself: its output, fed to every `convert` partition as an input,
is what makes a rerun over changed files convert again (spacenit/fingerprint.py).
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fingerprint_input(input_dir: str) -> str:
    """sha256 of the path, size and mtime of every file under `input_dir`."""
    from spacenit.fingerprint import fingerprint_directory

    digest = fingerprint_directory(input_dir)
    print(f"{input_dir}: {digest}")
    return digest


fingerprint_input_op = fingerprint_input

"""A cheap fingerprint of an input directory: what makes the pipeline's `convert` cache honest.

KFP caches a step by its inputs. `convert`'s only data input is the string
`input_dir`, so a rerun after the GeoTIFFs under it changed would reuse the stale
dataset. The pipeline runs `fingerprint_directory` first (never cached) and hands
its result to `convert` as an input: a changed, added, removed or renamed file
changes the fingerprint, hence the cache key.

It reads no pixels: the fingerprint covers each file's path relative to the root,
size and modification time (ns), so it costs one `stat` per file. Symbolic links
are followed (a linked folder's files count as the root's), each real directory
at most once, so a link cycle ends.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class FingerprintError(ValueError):
    """The input to fingerprint is not a directory."""


def fingerprint_directory(root: str | Path) -> str:
    """sha256 (hex) of the sorted (relative path, size, mtime_ns) of every file under `root`."""
    root = Path(root)
    if not root.is_dir():
        what = "a file, not a directory" if root.exists() else "missing"
        raise FingerprintError(f"input directory {root} is {what}")
    entries = []
    seen_dirs = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen_dirs:
            subdirs[:] = []  # a link back to a directory already walked
            continue
        seen_dirs.add(real)
        subdirs.sort()
        for name in files:
            path = Path(directory, name)
            try:
                info = path.stat()
            except FileNotFoundError:  # a dangling link: its name still counts
                entries.append(f"{path.relative_to(root).as_posix()}\t-\t-")
                continue
            entries.append(
                f"{path.relative_to(root).as_posix()}\t{info.st_size}\t{info.st_mtime_ns}"
            )
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode() + b"\n")
    return digest.hexdigest()

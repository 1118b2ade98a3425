"""Output that cannot be written: a full disk, or a path without write permission.

The CLI gives these their own exit codes and one line naming the path, so that a
script can tell "the disk is full" from "some inputs failed" (1) and "the input
or the options are wrong" (2):

    3  no space left (ENOSPC, EDQUOT): free space, or write elsewhere
    4  not writable (EACCES, EPERM, EROFS): a read-only file system or missing permission

An error raised by `write()` or `fsync()` names no file; `naming(path)` adds
the path being written, and `check_writable(path)` lets a stage that computes
for long before it writes fail at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

EXIT_DISK_FULL = 3
EXIT_NOT_WRITABLE = 4

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}

EXIT_CODES_HELP = """exit codes:
  0  done
  1  done, but some inputs failed (convert: listed in convert_report.json)
  2  bad input or options (one line says which)
  3  no space left on a device being written (ENOSPC, EDQUOT)
  4  an output is not writable: read-only file system or no permission (EROFS, EACCES, EPERM)"""


def exit_code(error: OSError) -> int | None:
    """EXIT_DISK_FULL or EXIT_NOT_WRITABLE for those errors, None for any other."""
    if error.errno in DISK_FULL:
        return EXIT_DISK_FULL
    if error.errno in NOT_WRITABLE:
        return EXIT_NOT_WRITABLE
    return None


def describe(error: OSError, fallback_path: str | Path | None = None) -> str:
    """One line: what happened, to which path (the error's own, else `fallback_path`), and what to do."""
    path = error.filename or fallback_path
    where = f" writing {path}" if path else ""
    if error.errno in DISK_FULL:
        return f"no space left on the device{where} ({error.strerror}); free some space or write elsewhere"
    if error.errno == errno.EROFS:
        return f"read-only file system{where}; write the output to a writable directory"
    return f"permission denied{where} ({error.strerror}); write the output where you may, or fix the permissions"


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Re-raise an OSError that names no file (from write(), fsync(), close()) with `path` as its file."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def check_writable(path: str | Path) -> None:
    """Raise the OSError (naming `path`) that writing the file `path` would raise for want of permission.

    Creates and removes a file in `path`'s directory, which is what an atomic write
    does first; a full disk shows only when the bytes are written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e

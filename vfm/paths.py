"""Checks of the folders a run or a tool writes into, made before any work (and without writing)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from vfm.errors import ConfigError


def check_output_folder(path: str | Path, key: str) -> None:
    """`path` must be a folder, or creatable as one, that this process can write to (checked without writing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: got {str(path)!r}, expected a folder (it is a file)")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}: got {str(path)!r}, expected a folder path ({ancestor} is a file)")
    try:  # an unnamed temp file (O_TMPFILE): the same permission and read-only checks a real write meets
        tempfile.TemporaryFile(dir=ancestor).close()
    except OSError as error:
        raise ConfigError(f"{key}: got {str(path)!r}, expected a writable folder ({ancestor}: {error.strerror})") from error

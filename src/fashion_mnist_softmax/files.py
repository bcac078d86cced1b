"""Files written whole or not at all: a reader never sees half a file."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def temp_file_beside(path: Path) -> tuple[int, Path]:
    """A new, uniquely named file next to ``path``, to be renamed over it: its descriptor and its path.

    Made with the mode ``open()`` gives, the umask applied (``tempfile.mkstemp`` makes owner-only files).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write`` through a temp file beside it and a rename: readers never see half a file, and
    a failed write (a full disk) leaves the file as it was."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON whole or not at all."""
    write_atomic(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))

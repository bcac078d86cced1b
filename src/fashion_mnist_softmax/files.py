"""Files written whole or not at all: a reader never sees half a file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def temp_file_beside(path: Path) -> tuple[int, Path]:
    """A new, uniquely named file next to ``path``, to be renamed over it: its descriptor and its path.

    Made with the mode ``open()`` gives, the umask applied (``tempfile.mkstemp`` makes owner-only files).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temp file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Files written whole or not at all: ``write_atomically`` writes a temporary file in the same
folder and renames it over the target, so a reader, a second writer or a kill in between sees
the old file or the new one, never a part of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (str: UTF-8) through a temporary file beside it; the
    temporary file is removed if the write fails. The folder must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

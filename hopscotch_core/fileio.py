"""One way to replace a file atomically: write a unique temporary file in the same folder, fsync it, rename it
over the target. A reader sees the old file or the new one, never a torn one; two writers never share a
temporary file; a kill mid-write leaves at most a hidden `.NAME.*.tmp` behind.

    atomic_write("run/manifest.json", json.dumps(obj))            # text or bytes
    atomic_write("run/epoch_001.safetensors", lambda tmp: save_file(tensors, tmp))   # a writer given the temp path
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], None], encoding: str = "utf-8") -> Path:
    """Replace `path` with `data` (str, bytes, or a function that writes the file at the path it is given)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            os.write(fd, data.encode(encoding) if isinstance(data, str) else data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

"""One way to replace a file atomically: write a unique temporary file in the same folder, fsync it, rename it
over the target. A reader sees the old file or the new one, never a torn one; two writers never share a
temporary file; a kill mid-write leaves at most a hidden `.NAME.*.tmp` behind.

    atomic_write("run/manifest.json", json.dumps(obj))            # text or bytes
    atomic_write("run/epoch_001.safetensors", lambda tmp: save_file(tensors, tmp))   # a writer given the temp path

The file gets the mode a plain `open(path, "w")` would give it (0644 under the usual umask 022), or keeps the
mode of the file it replaces: the temporary file's private 0600 must not survive the rename, or another user or
a serving container could not read what the project writes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux /proc), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(path: str | os.PathLike) -> int:
    """The permission bits a new file at `path` should have: those of the file there now, else 0666 & ~umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], None], encoding: str = "utf-8") -> Path:
    """Replace `path` with `data` (str, bytes, or a function that writes the file at the path it is given)."""
    path = Path(path)
    mode = normal_mode(path)
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
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

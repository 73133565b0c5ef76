"""Atomic file writes (a temp file in the same folder, fsync, then rename: readers never see half a file)
and run folders that never overwrite an earlier run."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o666) -> None:
    """mode: permissions before the umask (0o600 for secrets such as a node's identity key)."""
    path = Path(path)
    # os.open rather than mkstemp: mkstemp's 0600 would leave shared files private; 0666 lets the
    # umask decide, like a plain open(path, "w")
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:  # named by the file meant, not by the temp file beside it
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # same folder, so the rename is atomic; the last of two writers wins
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fresh_dir(root: Path, name: str) -> Path:
    """root/name, or root/name-2, -3, ... when it exists: a rerun never overwrites an earlier run."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100_000):
        path = root / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()  # atomic: two runs started at once cannot pick the same folder
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{root} holds 100,000 runs named {name!r}; clean it up")

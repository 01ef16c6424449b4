"""Files written whole or not at all: a reader, or a process resumed after a crash, never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_file_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """``text`` into ``path`` by way of a temporary beside it and a rename; ``mode`` (None: the umask's default) is
    set before the rename, so a secret is never readable by others even for a moment."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    if mode is not None:
        os.chmod(temporary, mode)
    os.replace(temporary, path)

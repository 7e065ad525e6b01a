"""Small file helpers every store shares: atomic writes, a cross-process lock, and folder-backed registries."""
from __future__ import annotations

import json
import os
from pathlib import Path

from filelock import FileLock

from core.errors import InputError
from core.names import check_name


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader sees the old content or the new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def read_json(path: Path):
    """The file's JSON, or None when it is missing or half-written by an older, non-atomic writer."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def file_lock(path: Path, timeout: float = -1) -> FileLock:
    """An exclusive lock shared by threads and processes (flock on Unix). `timeout=0` tries once and raises
    filelock.Timeout when someone else holds it. The lock file is truncated on every try: keep nothing in it."""
    return FileLock(str(path), timeout=timeout)


class FolderRegistry:
    """Named things stored as folders under `root`, each marked by a file inside it (so a half-copied folder
    is not listed). Subclasses add what their things hold."""

    marker = "info.json"
    what = "item"
    hint = "none yet"

    def __init__(self, root: Path):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / self.marker).exists())

    def path(self, name: str) -> Path:
        """The thing's folder; a clear error naming the existing ones when there is no such thing."""
        folder = self.root / check_name(name, self.what)
        if not (folder / self.marker).exists():
            raise InputError(f"no such {self.what} ({self.existing()})", subject=name)
        return folder

    def existing(self) -> str:
        """What the "no such" message lists."""
        return "existing: " + (", ".join(self.names()) or self.hint)

    def free_name(self, wanted: str) -> str:
        """`wanted`, or wanted-2, wanted-3... if taken."""
        name, n = check_name(wanted, self.what), 2
        while (self.root / name).exists():
            name, n = f"{wanted}-{n}", n + 1
        return name

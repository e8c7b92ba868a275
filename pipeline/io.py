"""Atomic file and folder writes, and the stage CLIs' shared plumbing (params JSON, logging)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is made readable as a normal file
    (mode 0666 less the umask) and renamed onto `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync and rename."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write `obj` as JSON to `path` through a temporary file in the same folder and a rename."""
    write_bytes_atomic(path, json.dumps(obj, indent=indent).encode())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def params_from_json(cls: type[T], text: str, where: str) -> T:
    """Build the frozen params dataclass `cls` from a rule's JSON; unknown or missing keys name `where`."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in raw and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(names)}")
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    return cls(**raw)


def setup_logging(log_file: str | None = None) -> logging.Logger:
    """Log INFO and above to stderr (the rule sends stderr to its log:) and optionally to `log_file`."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return logging.getLogger("mowis")

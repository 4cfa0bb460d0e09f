"""Files written whole or not at all: every run file (config, manifest, metrics, checkpoints,
predictions and logits, the decoded-image cache, the label audit, the model card) goes to a temp
file beside its target, is flushed to disk and then renamed onto it, so an interrupted run never
leaves a half-written file behind. The temp name carries the process id: DDP ranks may write at once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path in the target's folder to write to; on leaving the block it is fsync'd and renamed
    onto `path`; on an error it is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_npy(array, path: str | os.PathLike) -> Path:
    """np.save, atomically (through a file handle: np.save would append .npy to the temp name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
    return Path(path)

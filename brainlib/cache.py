"""Decoded-image cache: every image decoded once into one memory-mappable uint8 array.

Decoding and resizing a 512 px JPEG with PIL every epoch costs more than the model on a small
CPU. The cache stores each image once as `size x size` grayscale uint8 (6,944 of the 7,023
images are gray; the other 79 carry colour casts, not information). Its file name is keyed by
the manifest rows (path + file hash), the size and the preprocessing version, so changed files
or another size give a new cache. A sidecar JSON written last holds the array's checksum;
a truncated or corrupt cache is detected, reported and rebuilt, never used silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import save_npy, write_text
from .config import default_cache_dir
from .data import load_gray
from .progress import progress as progress_bar

PREPROCESSING_VERSION = 2  # bump when load_gray changes (2: EXIF orientation applied)


def cache_key(manifest: pd.DataFrame, size: int) -> str:
    digest = hashlib.sha256(f"v{PREPROCESSING_VERSION}|{size}|".encode())
    for path, sha in zip(manifest["path"], manifest["file_sha256"]):
        digest.update(f"{path}|{sha}\n".encode())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _paths(cache_dir: Path, manifest: pd.DataFrame, size: int) -> tuple[Path, Path]:
    stem = f"gray{size}-{cache_key(manifest, size)}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _is_valid(array_path: Path, meta_path: Path, expected_shape: tuple[int, ...]) -> bool:
    if not (array_path.exists() and meta_path.exists()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(array_path, mmap_mode="r")
        ok = tuple(arr.shape) == expected_shape and arr.dtype == np.uint8
        ok = ok and meta.get("sha256") == _file_sha256(array_path)
    except (OSError, ValueError, json.JSONDecodeError):
        ok = False
    if not ok:
        warnings.warn(f"cache {array_path} is incomplete or corrupt: rebuilding it", stacklevel=3)
    return ok


def build_or_load_cache(
    manifest: pd.DataFrame, data_root: str | Path, size: int, cache_dir: str | Path | None = None, progress: bool = True
) -> np.ndarray:
    """N x size x size uint8 array, row-aligned with `manifest` (memory-mapped when loaded)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    array_path, meta_path = _paths(cache_dir, manifest, size)
    shape = (len(manifest), size, size)
    if _is_valid(array_path, meta_path, shape):
        return np.load(array_path, mmap_mode="r")
    meta_path.unlink(missing_ok=True)  # the sidecar marks a finished cache: remove it first

    root = Path(data_root)
    images = np.empty(shape, dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        work = pool.map(lambda p: load_gray(root / p, size), manifest["path"])
        for i, img in enumerate(
            progress_bar(work, f"cache {size}px", total=len(manifest), disable=not progress, mininterval=2)
        ):
            images[i] = img
    save_npy(images, array_path)  # DDP ranks may build at once: each writes its own temp file
    meta = {"shape": list(shape), "size": size, "version": PREPROCESSING_VERSION, "sha256": _file_sha256(array_path)}
    write_text(meta_path, json.dumps(meta))  # last: the sidecar marks a finished cache
    return images

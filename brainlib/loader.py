"""How a run's images become model batches: the run's data (manifest + decoded cache) and
batches over a split or over chosen rows, augmented as the config asks (brainlib.augment).

Two paths:
- `CachedBatches`: batches cut from the decoded uint8 cache and transformed as whole tensors (on
  the GPU when training there). Used by training, scoring and the shift suite.
- `ImageFileDataset` + `augment.reference_transforms`: the plain pipeline (PIL decode and
  torchvision.transforms.v2 per image, every epoch). Kept as the reference and for the benchmark.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .augment import AugmentParams, PreparedBatch, apply_batch, augment_params, prepare_batch
from .cache import build_or_load_cache
from .config import Config
from .data import open_image, read_manifest, resolve_data_dir, to_rgb
from .errors import BrainlibError
from .infer import to_device


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the reference's Normalize(mean=0.5, std=0.5)."""
    return x01 * 2.0 - 1.0


class ImageFileDataset(torch.utils.data.Dataset):
    """Manifest rows -> (transformed image, label), decoding the file every time."""

    def __init__(self, manifest: pd.DataFrame, data_root: str | Path, transform):
        self.paths = [Path(data_root) / p for p in manifest["path"]]
        self.labels = manifest["label_idx"].to_numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(to_rgb(open_image(self.paths[i]))), int(self.labels[i])


def resize_batch(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float (B, 1, out, out) in [0, 1]: the evaluation transform."""
    x = images.float() / 255.0
    if x.shape[-1] == out_size:
        return x
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False).clamp_(
        0, 1
    )


def to_model_input(x01: torch.Tensor) -> torch.Tensor:
    """Gray [0, 1] -> normalised 3-channel, channels-last (the models take RGB; gray is R=G=B)."""
    return normalize(x01).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


class CachedBatches:
    """Iterate (inputs, labels) batches over rows of the decoded cache.

    Shuffling and augmentation draw from generators seeded by (seed, epoch), so any epoch
    can be replayed exactly, which makes resume bit-exact on CPU. Under DistributedDataParallel
    each of `world_size` processes takes every world_size-th index of the same permutation
    (padded by wrapping so all ranks take the same number of steps), like DistributedSampler.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        image_size: int = 224,
        train: bool = False,
        aug: AugmentParams = AugmentParams(),
        seed: int = 0,
        device: str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        self.host_images = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1)
        self.images = self.host_images.to(device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        self.batch_size, self.image_size, self.train, self.aug, self.seed = batch_size, image_size, train, aug, seed
        self.epoch, self.rank, self.world_size = 0, rank, world_size
        self.drop_last = False  # train: skip the epoch's last, smaller batch (CUDA graphs replay one shape)
        # train: where the next batch is prepared, Config.host_prefetch's values: "thread" (a host thread),
        # "process" (a worker process, where the draws and libjpeg do not hold the training thread's
        # interpreter lock: on an H200 the thread's preparing, 13.5 ms a batch, and the step's ≈900 launches
        # took turns with that lock; not measured there yet), "off" (in line), "auto" (a thread on a GPU,
        # in line on a CPU, where the same cores would prepare and train)
        self.prefetch = "auto"

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.train:
            return torch.arange(n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        if self.world_size > 1:
            order = torch.cat([order, order[: (-n) % self.world_size]])[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.labels)
        per_rank = math.ceil(n / self.world_size) if self.train else n
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 64 + self.rank + 1)  # augmentation
        order_host = self._indices()
        order = to_device(order_host, self.images.device)  # once per epoch, not once per batch
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        if not self.train:
            for start in starts:
                yield self._scoring_batch(order[start : start + self.batch_size])
            return

        on_gpu = self.images.device.type == "cuda"

        def prepare(start: int) -> PreparedBatch:
            return prepare_batch(
                self.host_images, order_host[start : start + self.batch_size], self.aug, gen, pin=on_gpu
            )

        where = ("thread" if on_gpu else "off") if self.prefetch == "auto" else self.prefetch
        if where == "off":
            for start in starts:
                yield self._training_batch(order[start : start + self.batch_size], prepare(start))
            return
        if where == "process" and "fork" in multiprocessing.get_all_start_methods():  # else the thread
            yield from self._prepared_by_a_worker(order, order_host, starts, gen, pin=on_gpu)
            return
        # on a GPU a host thread draws the next batch and runs its JPEG round trips while this one
        # trains; draws stay in batch order (one producer), so a seed gives the same batches
        with ThreadPoolExecutor(1, thread_name_prefix="augment") as pool:
            ahead = pool.submit(prepare, starts[0]) if starts else None
            for k, start in enumerate(starts):
                prepared = ahead.result()
                if k + 1 < len(starts):
                    ahead = pool.submit(prepare, starts[k + 1])
                yield self._training_batch(order[start : start + self.batch_size], prepared)

    def _prepared_by_a_worker(
        self, order: torch.Tensor, order_host: torch.Tensor, starts: range, gen: torch.Generator, pin: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches, each prepared by one forked worker process in batch order (the same draws
        as in line: it holds the epoch's generator and draws nothing else), at most two ahead. The worker
        never touches the GPU (CUDA does not survive a fork): it returns host tensors through shared
        memory, and they are page-locked here."""
        import torch.multiprocessing as torch_mp  # its queue passes tensors through shared memory

        context = torch_mp.get_context("fork")
        ready, received = context.Queue(maxsize=2), context.Event()
        worker = context.Process(
            target=_prepare_epoch,
            args=(self.host_images, order_host, list(starts), self.batch_size, self.aug, gen, ready, received),
            daemon=True,
        )
        worker.start()
        try:
            for start in starts:
                prepared = _next_from_worker(ready, worker)
                if isinstance(prepared, str):
                    raise RuntimeError(f"the augmentation's worker process failed: {prepared}")
                prepared = prepared.pinned() if pin else prepared
                yield self._training_batch(order[start : start + self.batch_size], prepared)
        finally:  # also when the consumer stops early: no worker outlives its epoch
            received.set()
            worker.terminate()
            worker.join()
            ready.close()
            ready.cancel_join_thread()

    def _scoring_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return to_model_input(resize_batch(self.images[idx], self.image_size)), self.labels[idx]

    def _training_batch(self, idx: torch.Tensor, prepared: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x = apply_batch(self.images[idx], prepared, self.image_size, self.aug)
        return to_model_input(x), self.labels[idx]

    def batch(self, indices, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) for the given positions; augmented (drawing from `gen`) when train=True."""
        host_idx = torch.as_tensor(indices, dtype=torch.long)
        idx = host_idx.to(self.images.device)
        if not self.train:
            return self._scoring_batch(idx)
        prepared = prepare_batch(self.host_images, host_idx, self.aug, gen, pin=self.images.device.type == "cuda")
        return self._training_batch(idx, prepared)


# a batch takes 5-20 ms to prepare: a worker that sends nothing this long is stuck, and training should stop
# with the reason rather than wait for ever
WORKER_SILENCE_S = 300.0
_RESUME = "`train --resume` continues after the last finished epoch (`--host-prefetch thread` prepares in this process)"


def _next_from_worker(ready, worker):
    """The worker's next batch (or its one-line failure). A worker that died without a word (killed by
    the kernel's out-of-memory killer, say) or that sends nothing for WORKER_SILENCE_S raises here instead of
    leaving the training loop waiting on the queue for ever."""
    waited = 0.0
    while True:
        try:
            return ready.get(timeout=1.0)
        except queue.Empty:
            waited += 1.0
            if not worker.is_alive():
                raise BrainlibError(
                    f"the augmentation's worker process stopped (exit code {worker.exitcode}) before its batch "
                    f"was ready; {_RESUME}"
                ) from None
            if waited >= WORKER_SILENCE_S:
                raise BrainlibError(
                    f"the augmentation's worker process sent no batch in {waited:.0f} s; {_RESUME}"
                ) from None


def _prepare_epoch(host_images, order_host, starts, batch_size, aug, gen, ready, received) -> None:
    """A worker process's loop: the epoch's batches prepared in order, each put on `ready`; a failure is
    put there as its one-line text (an exception object may not survive the trip). It then waits for
    `received`: a tensor passed through shared memory is handed over by this process, which must still be
    there when the parent takes the last batch."""
    # libjpeg and the draws are single-threaded, and the cores are the training's; and a forked child that
    # enters the OpenMP pool its parent already used hangs there (measured: a 64-image interpolate in the
    # child never returned in 20 s without this line, and returned at once with it)
    torch.set_num_threads(1)
    try:
        for start in starts:
            ready.put(prepare_batch(host_images, order_host[start : start + batch_size], aug, gen, pin=False))
    except Exception as error:  # reported to the parent, which raises it
        ready.put(f"{type(error).__name__}: {error}")
    received.wait(timeout=600)  # an orphan (its parent killed) does not wait forever


@dataclass
class RunData:
    manifest: pd.DataFrame
    images: np.ndarray  # decoded cache, row-aligned with manifest
    data_root: Path

    def rows(self, split: str) -> np.ndarray:
        """Manifest positions of a split (train, val or test)."""
        return np.flatnonzero((self.manifest["split"] == split).to_numpy())


def load_run_data(cfg: Config) -> RunData:
    """The run's manifest (from 01_data) and its decoded-image cache."""
    manifest = read_manifest(cfg.run_dir)
    root = resolve_data_dir(cfg.data_dir or None)
    images = build_or_load_cache(manifest, root, cfg.cache_size, cfg.cache_dir or None)
    return RunData(manifest, images, root)


def split_batches(cfg: Config, data: RunData, split: str, device: str = "cpu", train: bool = False) -> CachedBatches:
    return rows_batches(cfg, data, data.rows(split), device, train)


CUDA_SCORING_BATCH = 512


def rows_batches(
    cfg: Config, data: RunData, rows: np.ndarray, device: str = "cpu", train: bool = False, images=None
) -> CachedBatches:
    """Batches over the given manifest rows (positions), in order unless train=True. `images`
    replaces the cached pixels of those rows (a shifted copy, say)."""
    rows = np.asarray(rows, dtype=int)
    # scoring on CUDA in large batches: per-image results do not depend on the batch (BN in eval
    # mode), and a batch of 64 leaves an H100/H200 launch-bound
    batch_size = (
        cfg.batch_size if train or torch.device(device).type != "cuda" else max(cfg.batch_size, CUDA_SCORING_BATCH)
    )
    pixels = (
        images
        if images is not None
        else (data.images[rows] if len(rows) else np.zeros((0, cfg.cache_size, cfg.cache_size), np.uint8))
    )
    return CachedBatches(
        pixels,
        data.manifest["label_idx"].to_numpy()[rows],
        batch_size,
        cfg.image_size,
        train=train,
        aug=augment_params(cfg),
        seed=cfg.seed,
        device=device,
    )

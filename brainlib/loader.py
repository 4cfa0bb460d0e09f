"""How a run's images become model batches: the run's data (manifest + decoded cache), batches
over a split or over chosen rows, and the augmentation a config asks for.

Two paths with the same augmentation semantics:
- `reference_transforms` + `ImageFileDataset`: the plain pipeline (PIL decode and
  torchvision.transforms.v2 per image, every epoch). Kept as the reference and for the benchmark.
- `CachedBatches`: batches cut from the decoded uint8 cache and augmented as whole tensors
  (on the GPU when training there). Flip, rotation and random-resized-crop are one affine
  map per image, so they are applied by a single `grid_sample` (one interpolation instead of
  three); brightness and contrast are per-image scalars.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .acquisition import AcquisitionParams, augment_acquisition
from .cache import build_or_load_cache
from .config import Config
from .data import open_image, read_manifest, resolve_data_dir, to_rgb


@dataclass(frozen=True)
class AugmentParams:
    """The train-time augmentation. Defaults are torchvision's where the reference names a
    transform without parameters (RandomResizedCrop scale 0.08-1) and 0.2 for ColorJitter."""

    flip_p: float = 0.5
    rotation_deg: float = 15.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2  # no effect on grayscale input; kept for the plain pipeline
    acquisition: AcquisitionParams | None = None  # scanner/export shifts (brainlib.acquisition); None: off


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the reference's Normalize(mean=0.5, std=0.5)."""
    return x01 * 2.0 - 1.0


def reference_transforms(train: bool, size: int = 224, aug: AugmentParams = AugmentParams()) -> v2.Compose:
    """The plain per-image pipeline on PIL images."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    if not train:
        return v2.Compose([v2.Resize((size, size)), *tail])
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(aug.flip_p),
            v2.RandomRotation(aug.rotation_deg),
            v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio),
            v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation),
            *tail,
        ]
    )


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


def _crop_boxes(n: int, side: int, aug: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop boxes (w, h, left, top) in pixels, torchvision's sampling rule
    (10 tries, then the whole image) vectorised over n images."""
    tries = 10
    area = side * side * torch.empty(n, tries).uniform_(*aug.crop_scale, generator=gen)
    log_r = torch.empty(n, tries).uniform_(math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]), generator=gen)
    w = torch.sqrt(area * torch.exp(log_r)).round()
    h = torch.sqrt(area / torch.exp(log_r)).round()
    ok = (w > 0) & (h > 0) & (w <= side) & (h <= side)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp(min=0)
    w = torch.where(first >= 0, w[torch.arange(n), pick], torch.full((n,), float(side)))
    h = torch.where(first >= 0, h[torch.arange(n), pick], torch.full((n,), float(side)))
    left = torch.floor(torch.rand(n, generator=gen) * (side - w + 1))
    top = torch.floor(torch.rand(n, generator=gen) * (side - h + 1))
    return torch.stack([w, h, left, top], 1)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small CPU tensor on `device` without stalling the host: a plain `.to("cuda")` from
    pageable memory waits until the GPU has finished all queued work, so the next batch could not
    be prepared while this one trains. Pinned memory lets the copy run in stream order instead."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def augment_batch(images: torch.Tensor, out_size: int, aug: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float (B, 1, out, out) in [0, 1], each image with its own draw of
    acquisition shifts (when aug.acquisition is set: on the stored image, where a scanner or export
    pipeline acts), flip, rotation, random-resized-crop and brightness/contrast. Random numbers come
    from the CPU generator `gen`, so results do not depend on the device."""
    b, _, side, _ = images.shape
    x01 = augment_acquisition(images, aug.acquisition, gen) if aug.acquisition else images.float() / 255.0
    flip = torch.where(torch.rand(b, generator=gen) < aug.flip_p, -1.0, 1.0)
    angle = torch.deg2rad(torch.empty(b).uniform_(-aug.rotation_deg, aug.rotation_deg, generator=gen))
    w, h, left, top = _crop_boxes(b, side, aug, gen).unbind(1)
    # output coords (u, v) in [-1, 1] -> crop box -> undo rotation -> undo flip, all normalised
    sx, sy = w / side, h / side
    cx, cy = (2 * left + w) / side - 1, (2 * top + h) / side - 1
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([flip * cos * sx, -flip * sin * sy, flip * (cos * cx - sin * cy)], 1),
            torch.stack([sin * sx, cos * sy, sin * cx + cos * cy], 1),
        ],
        1,
    )
    bright = torch.empty(b).uniform_(1 - aug.brightness, 1 + aug.brightness, generator=gen)
    contrast = torch.empty(b).uniform_(1 - aug.contrast, 1 + aug.contrast, generator=gen)
    params = to_device(torch.cat([theta.view(b, 6), bright.view(b, 1), contrast.view(b, 1)], 1), images.device)
    theta, bright, contrast = params[:, :6].view(b, 2, 3), params[:, 6], params[:, 7]
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (x * bright.view(b, 1, 1, 1)).clamp_(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast.view(b, 1, 1, 1) + mean).clamp_(0, 1)


def resize_batch(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float (B, 1, out, out) in [0, 1]: the evaluation transform."""
    x = images.float() / 255.0
    if x.shape[-1] == out_size:
        return x
    return F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


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
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1).to(device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        self.batch_size, self.image_size, self.train, self.aug, self.seed = batch_size, image_size, train, aug, seed
        self.epoch, self.rank, self.world_size = 0, rank, world_size
        self.drop_last = False  # train: skip the epoch's last, smaller batch (CUDA graphs replay one shape)

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
        order = to_device(self._indices(), self.images.device)  # once per epoch, not once per batch
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.batch(order[start : start + self.batch_size], gen)

    def batch(self, indices, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) for the given positions; augmented (drawing from `gen`) when train=True."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        images = self.images[idx]
        x = augment_batch(images, self.image_size, self.aug, gen) if self.train else resize_batch(images, self.image_size)
        return to_model_input(x), self.labels[idx]


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


def augment_params(cfg: Config) -> AugmentParams:
    acquisition = AcquisitionParams() if cfg.acquisition_aug else None
    if not cfg.augment:
        return AugmentParams(
            flip_p=0, rotation_deg=0, crop_scale=(1, 1), crop_ratio=(1, 1), brightness=0, contrast=0, saturation=0, acquisition=acquisition
        )
    j = cfg.jitter
    return AugmentParams(crop_scale=(cfg.crop_scale_min, 1.0), brightness=j, contrast=j, saturation=j, acquisition=acquisition)


def split_batches(cfg: Config, data: RunData, split: str, device: str = "cpu", train: bool = False) -> CachedBatches:
    return rows_batches(cfg, data, data.rows(split), device, train)


CUDA_SCORING_BATCH = 512


def rows_batches(cfg: Config, data: RunData, rows: np.ndarray, device: str = "cpu", train: bool = False, images=None) -> CachedBatches:
    """Batches over the given manifest rows (positions), in order unless train=True. `images`
    replaces the cached pixels of those rows (a shifted copy, say)."""
    rows = np.asarray(rows, dtype=int)
    # scoring on CUDA in large batches: per-image results do not depend on the batch (BN in eval
    # mode), and a batch of 64 leaves an H100/H200 launch-bound
    batch_size = cfg.batch_size if train or torch.device(device).type != "cuda" else max(cfg.batch_size, CUDA_SCORING_BATCH)
    pixels = images if images is not None else (data.images[rows] if len(rows) else np.zeros((0, cfg.cache_size, cfg.cache_size), np.uint8))
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

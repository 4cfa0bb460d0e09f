"""All train-time augmentation: the plain recipe's geometric and photometric jitter, and the
acquisition shifts (what another scanner or export pipeline does to an image).

Plain: flip, rotation and random-resized-crop are one affine map per image, applied by a single
`grid_sample` over the batch (one interpolation instead of three); brightness and contrast are
per-image scalars. `reference_transforms` is the same augmentation as torchvision transforms on
PIL images, one image at a time: the reference pipeline, kept for the benchmark.

Acquisition (`AcquisitionParams`), batched tensor ops on the images' device, drawn per image from
four of the shift suite's families (`brainlib.shifts`):

- resolution: resample to 64-224 px and back with a random interpolation (area, bilinear,
  bicubic, nearest);
- compression: a real JPEG round trip at quality 10-95 (torchvision's libjpeg codec, on the CPU
  also when training on the GPU: 12 ms for 16 images, where kornia's differentiable JPEG took
  96 ms and only approximates libjpeg);
- intensity: gamma 0.5-2, a percentile window (clip 0-5 % at each end and rescale), CLAHE
  (kornia, clip limit 1-4, 4-16 tiles), global histogram equalisation (kornia);
- noise: Gaussian or Rician (magnitude of complex Gaussian noise, as in MR magnitude images),
  sigma 0.5-6 % of full scale.

The frequency family (Fourier low/high-pass, blur, unsharp masking, wavelet denoising) and the
MR artifact family (bias field, Gibbs ringing, ghosting, motion, k-space spikes) are held out on
purpose: the shift suite reports them separately, as a test of generalisation rather than of
having seen the transform. Parameters are drawn from ranges, never the suite's exact settings.

Every random number comes from a CPU generator seeded per (seed, epoch), so results do not depend
on the device and a CPU run replays exactly.

A batch is made in two halves. `prepare_batch`, on the host, draws every number the batch uses (in
the order the earlier per-image code drew them, so a seed gives the same images), packs them into
one tensor and runs the JPEG round trips from host copies of the rows. `apply_batch`, on the
images' device, applies each transform to all the images that drew it, indexed by device tensors:
one pinned copy in, nothing read back. The per-image code waited on the GPU about 50 times per batch
of 64 (scalar reads, pageable copies, list indexing), which held EfficientNet-Lite0 training on an
H200 at 1,100-1,440 img/s against 4,800 without this augmentation; on a GPU the loader now prepares
the next batch in a host thread while the current one trains.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .config import Config

TRAINED_FAMILIES: tuple[str, ...] = ("resolution", "compression", "intensity", "noise")
INTERPOLATIONS = ("area", "bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class AcquisitionParams:
    """Probability that each transform touches an image, and the range it draws from. With these
    values about a fifth of the training images stay untouched."""

    p_resolution: float = 0.25
    resolution_px: tuple[int, int] = (64, 224)
    p_jpeg: float = 0.25
    jpeg_quality: tuple[int, int] = (10, 95)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.5, 2.0)  # log-uniform
    p_window: float = 0.2
    window_clip: float = 0.05  # up to this fraction of pixels clipped at each end
    p_clahe: float = 0.1
    clahe_clip: tuple[float, float] = (1.0, 4.0)
    clahe_tiles: tuple[int, ...] = (4, 8, 16)
    p_equalize: float = 0.05
    p_noise: float = 0.2
    noise_sigma: tuple[float, float] = (0.005, 0.06)


def _chosen(p: float, n: int, gen: torch.Generator) -> list[int]:
    return torch.nonzero(torch.rand(n, generator=gen) < p).flatten().tolist()


def _uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=gen))


@dataclass
class AcquisitionDraw:
    """Every random choice of one batch's acquisition shifts: which images each transform touches
    (positions in the batch) and with what parameters. Drawn on the host, in the order the per-image
    implementation drew them, so a seed gives the same augmentation as before batching."""

    jpeg_idx: list[int]
    jpeg_quality: list[int]
    resample_idx: list[int]
    resample_side: list[int]
    resample_mode: list[int]  # index into INTERPOLATIONS
    window_idx: list[int]
    window_q: list[tuple[float, float]]  # (low, high) quantile
    gamma_idx: list[int]
    gamma: list[float]
    clahe_idx: list[int]
    clahe_tiles: list[int]
    clahe_clip: list[float]
    equalize_idx: list[int]
    noise_idx: list[int]
    noise_sigma: torch.Tensor
    noise_rician: torch.Tensor
    noise_seed: int


def draw_acquisition(b: int, p: AcquisitionParams, gen: torch.Generator) -> AcquisitionDraw:
    """The acquisition draws of a batch of `b` images from the CPU generator `gen`."""
    jpeg_idx = _chosen(p.p_jpeg, b, gen)
    quality = [int(torch.randint(p.jpeg_quality[0], p.jpeg_quality[1] + 1, (1,), generator=gen)) for _ in jpeg_idx]
    resample_idx, sides, modes = _chosen(p.p_resolution, b, gen), [], []
    for _ in resample_idx:
        sides.append(int(torch.randint(p.resolution_px[0], p.resolution_px[1] + 1, (1,), generator=gen)))
        modes.append(int(torch.randint(len(INTERPOLATIONS), (1,), generator=gen)))
    window_idx = _chosen(p.p_window, b, gen)
    window_q = [(_uniform(0, p.window_clip, gen), 1 - _uniform(0, p.window_clip, gen)) for _ in window_idx]
    gamma_idx = _chosen(p.p_gamma, b, gen)
    gamma = [math.exp(_uniform(math.log(p.gamma[0]), math.log(p.gamma[1]), gen)) for _ in gamma_idx]
    clahe_idx, tiles, clips = _chosen(p.p_clahe, b, gen), [], []
    for _ in clahe_idx:
        tiles.append(p.clahe_tiles[int(torch.randint(len(p.clahe_tiles), (1,), generator=gen))])
        clips.append(_uniform(*p.clahe_clip, gen))
    equalize_idx = _chosen(p.p_equalize, b, gen)
    noise_idx = _chosen(p.p_noise, b, gen)
    sigma, rician, seed = torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0
    if noise_idx:
        sigma = torch.empty(len(noise_idx)).uniform_(*p.noise_sigma, generator=gen)
        rician = torch.rand(len(noise_idx), generator=gen) < 0.5
        seed = int(torch.randint(2**62, (1,), generator=gen))
    return AcquisitionDraw(
        jpeg_idx, quality, resample_idx, sides, modes, window_idx, window_q, gamma_idx, gamma,
        clahe_idx, tiles, clips, equalize_idx, noise_idx, sigma, rician, seed,
    )  # fmt: skip


def jpeg_roundtrip(images_u8: torch.Tensor, quality: int) -> torch.Tensor:
    """(B, 1, S, S) uint8 on the CPU -> the same after JPEG encode/decode with libjpeg: what export
    pipelines use (kornia's differentiable JPEG took 8x longer and only approximates it). A 256-px
    image takes about 0.2 ms."""
    from torchvision.io import decode_jpeg, encode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(images_u8), quality=quality))
    return torch.stack(decoded)


def jpeg_rows(images_u8: torch.Tensor, rows: torch.Tensor, draw: AcquisitionDraw) -> torch.Tensor:
    """The JPEG round trips a draw asks for, from host copies of the batch's stored images
    (`images_u8[rows]`, uint8 (N, 1, S, S) on the CPU): (len(draw.jpeg_idx), 1, S, S) uint8. Only
    the chosen rows are read, so this runs ahead of the device, on the host."""
    side = images_u8.shape[-1]
    if not draw.jpeg_idx:
        return torch.zeros((0, 1, side, side), dtype=torch.uint8)
    chosen = images_u8[rows[draw.jpeg_idx]]
    return torch.cat([jpeg_roundtrip(chosen[k : k + 1], q) for k, q in enumerate(draw.jpeg_quality)])


def resample(x01: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """(B, 1, S, S) float -> resampled to side x side with `mode`, then back to S with bilinear."""
    size = x01.shape[-1]
    smooth = mode in ("bilinear", "bicubic")
    small = F.interpolate(
        x01, size=(side, side), mode=mode, antialias=smooth, **({"align_corners": False} if smooth else {})
    )
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def _grouped(keys: list) -> tuple[list[int], list[tuple[object, int, int]]]:
    """Positions ordered by key, and each key's (key, start, stop) in that order: images that drew
    the same setting are transformed together."""
    order = sorted(range(len(keys)), key=lambda k: keys[k])
    groups, start = [], 0
    for stop in range(1, len(order) + 1):
        if stop == len(order) or keys[order[stop]] != keys[order[start]]:
            groups.append((keys[order[start]], start, stop))
            start = stop
    return order, groups


def _pack(draw: AcquisitionDraw | None, geometry: torch.Tensor):
    """One float32 vector with every per-image number the device needs (positions included: exact
    in float32 below 2**24), where each part sits in it, and the groups of images that share a
    resampling or a CLAHE grid (their positions stored group by group)."""
    parts: dict[str, list[float] | torch.Tensor] = {"geometry": geometry.flatten()}
    groups: dict[str, list] = {"resample": [], "clahe": []}
    if draw is not None:
        resample_order, groups["resample"] = _grouped(list(zip(draw.resample_side, draw.resample_mode)))
        clahe_order, groups["clahe"] = _grouped(draw.clahe_tiles)
        parts |= {
            "jpeg_idx": draw.jpeg_idx,
            "resample_idx": [draw.resample_idx[k] for k in resample_order],
            "window_idx": draw.window_idx,
            "window_q": [q for pair in draw.window_q for q in pair],
            "gamma_idx": draw.gamma_idx,
            "gamma": draw.gamma,
            "clahe_idx": [draw.clahe_idx[k] for k in clahe_order],
            "clahe_clip": [draw.clahe_clip[k] for k in clahe_order],
            "equalize_idx": draw.equalize_idx,
            "noise_idx": draw.noise_idx,
            "noise_sigma": draw.noise_sigma,
            "noise_rician": draw.noise_rician.float(),
        }
    layout, tensors, at = {}, [], 0
    for name, values in parts.items():
        t = torch.as_tensor(values, dtype=torch.float32).flatten()
        layout[name] = slice(at, at + len(t))
        tensors.append(t)
        at += len(t)
    return torch.cat(tensors), layout, groups


@dataclass
class PreparedBatch:
    """A batch's augmentation, ready for the device: its draws, the packed per-image numbers, and
    the JPEG round trips already done on the host. Built by `prepare_batch` (host only, so it can run
    ahead in another thread), used by `apply_batch` (device only)."""

    draw: AcquisitionDraw | None
    params: torch.Tensor
    layout: dict[str, slice]
    groups: dict[str, list]  # "resample": ((side, mode), start, stop), "clahe": (grid, start, stop)
    jpeg: torch.Tensor  # uint8 (n_jpeg, 1, S, S)

    def pinned(self) -> PreparedBatch:
        """The same batch with its tensors page-locked, for an asynchronous copy to the GPU."""
        return dataclasses.replace(self, params=self.params.pin_memory(), jpeg=self.jpeg.pin_memory())


def prepare_batch(
    images_u8: torch.Tensor, rows: torch.Tensor, aug: AugmentParams, gen: torch.Generator, pin: bool = False
) -> PreparedBatch:
    """Draw a batch's augmentation (acquisition first, then geometry: the per-image order) and run
    its JPEG round trips. `images_u8`: the stored images on the CPU, (N, 1, S, S) uint8; `rows`:
    the batch's positions in it. `pin`: page-lock the results for an asynchronous copy to the GPU."""
    b, side = len(rows), images_u8.shape[-1]
    draw = draw_acquisition(b, aug.acquisition, gen) if aug.acquisition else None
    return _prepared(images_u8, rows, draw, draw_geometry(b, side, aug, gen), pin)


def _prepared(
    images_u8: torch.Tensor, rows: torch.Tensor, draw: AcquisitionDraw | None, geometry: torch.Tensor, pin: bool
) -> PreparedBatch:
    """Drawn numbers -> a PreparedBatch: packed, JPEG round trips run, CLAHE modules built (here, on
    the host, not between the device's kernels)."""
    params, layout, groups = _pack(draw, geometry)
    side = images_u8.shape[-1]
    jpeg = jpeg_rows(images_u8, rows, draw) if draw else torch.zeros((0, 1, side, side), dtype=torch.uint8)
    for tiles, _, _ in groups["clahe"]:
        _clahe(tiles)
    prepared = PreparedBatch(draw, params, layout, groups, jpeg)
    return prepared.pinned() if pin else prepared


@functools.cache
def _clahe(tiles: int):
    """kornia's CLAHE for one grid, built once: its constructor validates ranges with host tensors."""
    from kornia.augmentation import RandomClahe

    return RandomClahe(grid_size=(tiles, tiles), p=1.0)


def _apply_acquisition(images: torch.Tensor, prepared: PreparedBatch, params: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, S, S) on the device -> float in [0, 1], every transform applied at once to the
    images that drew it. Positions and parameters are device tensors: no host synchronisation."""
    from kornia.enhance import equalize

    draw, lay = prepared.draw, prepared.layout

    def part(name: str) -> torch.Tensor:
        return params[lay[name]]

    def positions(name: str) -> torch.Tensor:
        return part(name).long()

    if draw.jpeg_idx:
        jpeg = prepared.jpeg.to(images.device, non_blocking=True)
        images = images.index_copy(0, positions("jpeg_idx"), jpeg)
    x = images.float() / 255.0
    resample_idx = positions("resample_idx")
    for (side, mode), start, stop in prepared.groups["resample"]:
        # per (side, mode) group, F.interpolate itself: separable resampling matrices in one bmm came
        # within 3e-7 of it, but CLAHE and equalisation count 8-bit levels, and pixels sitting on a
        # level boundary then moved a level (up to 0.24 after equalisation in 26 of 32 images)
        idx = resample_idx[start:stop]
        x.index_copy_(0, idx, resample(x.index_select(0, idx), side, INTERPOLATIONS[mode]))
    if draw.window_idx:
        idx = positions("window_idx")
        sel = x.index_select(0, idx)
        # torch.quantile's linear rule, one quantile pair per image (ranks in float64, as it has them)
        ordered = sel.flatten(1).sort(1).values
        ranks = part("window_q").view(-1, 2).double() * (ordered.shape[1] - 1)
        below, above = ranks.long(), ranks.ceil().long()
        weight = (ranks - below).float()
        lo, hi = torch.lerp(ordered.gather(1, below), ordered.gather(1, above), weight).unbind(1)
        lo, hi = lo.view(-1, 1, 1, 1), hi.view(-1, 1, 1, 1)
        x.index_copy_(0, idx, ((sel - lo) / (hi - lo).clamp(min=1e-3)).clamp(0, 1))
    if draw.gamma_idx:
        idx = positions("gamma_idx")
        x.index_copy_(0, idx, x.index_select(0, idx).clamp(min=0) ** part("gamma").view(-1, 1, 1, 1))
    clahe_idx, clahe_clip = positions("clahe_idx"), part("clahe_clip")
    for tiles, start, stop in prepared.groups["clahe"]:
        # kornia's CLAHE takes one clip limit per image through RandomClahe's parameters
        idx, clip = clahe_idx[start:stop], clahe_clip[start:stop]
        clahe = _clahe(tiles)
        x.index_copy_(0, idx, clahe.apply_transform(x.index_select(0, idx), {"clip_limit_factor": clip}, clahe.flags))
    if draw.equalize_idx:
        idx = positions("equalize_idx")
        x.index_copy_(0, idx, equalize(x.index_select(0, idx)))
    if draw.noise_idx:
        idx = positions("noise_idx")
        sigma = part("noise_sigma").view(-1, 1, 1, 1)
        rician = part("noise_rician").view(-1, 1, 1, 1) > 0.5
        device_gen = torch.Generator(x.device).manual_seed(draw.noise_seed)
        n1, n2 = torch.randn((2, len(draw.noise_idx), *x.shape[1:]), generator=device_gen, device=x.device) * sigma
        clean = x.index_select(0, idx)
        x.index_copy_(0, idx, torch.where(rician, torch.sqrt((clean + n1) ** 2 + n2**2), clean + n1).clamp(0, 1))
    return x


def augment_acquisition(images: torch.Tensor, p: AcquisitionParams, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float (B, 1, S, S) in [0, 1]: the acquisition shifts alone (draws,
    JPEG on the host, the rest on the images' device)."""
    b = images.shape[0]
    prepared = _prepared(
        images.cpu(), torch.arange(b), draw_acquisition(b, p, gen), torch.zeros(0), pin=images.device.type == "cuda"
    )
    return _apply_acquisition(images, prepared, prepared.params.to(images.device, non_blocking=True))


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


def crop_boxes(n: int, side: int, aug: AugmentParams, gen: torch.Generator) -> torch.Tensor:
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


def draw_geometry(b: int, side: int, aug: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """(b, 8): each image's affine map (flip, rotation, random-resized-crop as one 2x3 matrix over
    normalised coordinates), brightness and contrast factors."""
    flip = torch.where(torch.rand(b, generator=gen) < aug.flip_p, -1.0, 1.0)
    angle = torch.deg2rad(torch.empty(b).uniform_(-aug.rotation_deg, aug.rotation_deg, generator=gen))
    w, h, left, top = crop_boxes(b, side, aug, gen).unbind(1)
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
    return torch.cat([theta.view(b, 6), bright.view(b, 1), contrast.view(b, 1)], 1)


def apply_batch(images: torch.Tensor, prepared: PreparedBatch, out_size: int, aug: AugmentParams) -> torch.Tensor:
    """uint8 (B, 1, S, S) on the device -> float (B, 1, out, out) in [0, 1]: a prepared batch's
    augmentation. One asynchronous copy brings its numbers (two with JPEG pixels); nothing is read
    back, so the host can prepare the next batch while the device works."""
    b = images.shape[0]
    params = prepared.params.to(images.device, non_blocking=True)
    x01 = _apply_acquisition(images, prepared, params) if prepared.draw is not None else images.float() / 255.0
    geometry = params[prepared.layout["geometry"]].view(b, 8)
    theta, bright, contrast = geometry[:, :6].view(b, 2, 3), geometry[:, 6], geometry[:, 7]
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (x * bright.view(b, 1, 1, 1)).clamp_(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast.view(b, 1, 1, 1) + mean).clamp_(0, 1)


def augment_batch(images: torch.Tensor, out_size: int, aug: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float (B, 1, out, out) in [0, 1], each image with its own draw of
    acquisition shifts (when aug.acquisition is set: on the stored image, where a scanner or export
    pipeline acts), flip, rotation, random-resized-crop and brightness/contrast. Random numbers come
    from the CPU generator `gen`, so results do not depend on the device. For images on a GPU this
    reads the batch back once for the JPEG round trips; training prepares from host copies instead
    (`loader.CachedBatches`)."""
    host = images if images.device.type == "cpu" else images.cpu()
    prepared = prepare_batch(host, torch.arange(len(images)), aug, gen, pin=images.device.type == "cuda")
    return apply_batch(images, prepared, out_size, aug)


def augment_params(cfg: Config) -> AugmentParams:
    acquisition = AcquisitionParams() if cfg.acquisition_aug else None
    if not cfg.augment:
        return AugmentParams(
            flip_p=0,
            rotation_deg=0,
            crop_scale=(1, 1),
            crop_ratio=(1, 1),
            brightness=0,
            contrast=0,
            saturation=0,
            acquisition=acquisition,
        )
    j = cfg.jitter
    return AugmentParams(
        crop_scale=(cfg.crop_scale_min, 1.0), brightness=j, contrast=j, saturation=j, acquisition=acquisition
    )

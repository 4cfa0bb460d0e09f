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
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .config import Config
from .infer import to_device

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


def resample(x01: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """(B, 1, S, S) float -> resampled to side x side with `mode`, then back to S with bilinear."""
    size = x01.shape[-1]
    smooth = mode in ("bilinear", "bicubic")
    small = F.interpolate(
        x01, size=(side, side), mode=mode, antialias=smooth, **({"align_corners": False} if smooth else {})
    )
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def jpeg_roundtrip(images_u8: torch.Tensor, quality: int) -> torch.Tensor:
    """(B, 1, S, S) uint8 -> the same after JPEG encode/decode, with libjpeg on the CPU whatever
    the images' device: libjpeg is what export pipelines use, and torchvision's decoder takes its
    bytes on the CPU only (so a CUDA encode would come back anyway). A 256-px image is 64 KB."""
    from torchvision.io import decode_jpeg, encode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(images_u8.cpu()), quality=quality))
    return torch.stack(decoded).to(images_u8.device)


def augment_acquisition(images: torch.Tensor, p: AcquisitionParams, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> float (B, 1, S, S) in [0, 1]. Every random choice comes from the CPU
    generator `gen` (noise from a device generator seeded by it), so a CPU run replays exactly."""
    from kornia.enhance import equalize, equalize_clahe

    b = images.shape[0]
    images = images.clone()
    for i in _chosen(p.p_jpeg, b, gen):
        quality = int(torch.randint(p.jpeg_quality[0], p.jpeg_quality[1] + 1, (1,), generator=gen))
        images[i : i + 1] = jpeg_roundtrip(images[i : i + 1], quality)
    x = images.float() / 255.0
    for i in _chosen(p.p_resolution, b, gen):
        side = int(torch.randint(p.resolution_px[0], p.resolution_px[1] + 1, (1,), generator=gen))
        mode = INTERPOLATIONS[int(torch.randint(len(INTERPOLATIONS), (1,), generator=gen))]
        x[i : i + 1] = resample(x[i : i + 1], side, mode)
    for i in _chosen(p.p_window, b, gen):
        lo_q, hi_q = _uniform(0, p.window_clip, gen), 1 - _uniform(0, p.window_clip, gen)
        lo, hi = torch.quantile(x[i].flatten(), torch.tensor([lo_q, hi_q], device=x.device))
        x[i] = ((x[i] - lo) / (hi - lo).clamp(min=1e-3)).clamp(0, 1)
    for i in _chosen(p.p_gamma, b, gen):
        x[i] = x[i].clamp(min=0) ** math.exp(_uniform(math.log(p.gamma[0]), math.log(p.gamma[1]), gen))
    for i in _chosen(p.p_clahe, b, gen):
        tiles = p.clahe_tiles[int(torch.randint(len(p.clahe_tiles), (1,), generator=gen))]
        x[i : i + 1] = equalize_clahe(x[i : i + 1], clip_limit=_uniform(*p.clahe_clip, gen), grid_size=(tiles, tiles))
    equalized = _chosen(p.p_equalize, b, gen)
    if equalized:
        x[equalized] = equalize(x[equalized])
    noisy = _chosen(p.p_noise, b, gen)
    if noisy:
        sigma = torch.empty(len(noisy)).uniform_(*p.noise_sigma, generator=gen).to(x.device).view(-1, 1, 1, 1)
        rician = (torch.rand(len(noisy), generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
        device_gen = torch.Generator(x.device).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        n1, n2 = torch.randn((2, len(noisy), *x.shape[1:]), generator=device_gen, device=x.device) * sigma
        clean = x[noisy]
        x[noisy] = torch.where(rician, torch.sqrt((clean + n1) ** 2 + n2**2), clean + n1).clamp(0, 1)
    return x


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

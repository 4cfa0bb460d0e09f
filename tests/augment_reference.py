"""The per-image acquisition and geometric augmentation as it was before batching, frozen as the
specification the batched version (brainlib.augment) is tested against: same generator draws in the
same order, same outputs. The per-image primitives (resample, JPEG round trip) and the geometric
draws are the package's own. Not used by the package."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from brainlib.augment import INTERPOLATIONS, AcquisitionParams, AugmentParams, draw_geometry, jpeg_roundtrip, resample


def _chosen(p: float, n: int, gen: torch.Generator) -> list[int]:
    return torch.nonzero(torch.rand(n, generator=gen) < p).flatten().tolist()


def _uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=gen))


def augment_acquisition(images: torch.Tensor, p: AcquisitionParams, gen: torch.Generator) -> torch.Tensor:
    from kornia.enhance import equalize, equalize_clahe

    b = images.shape[0]
    images = images.clone()
    for i in _chosen(p.p_jpeg, b, gen):
        quality = int(torch.randint(p.jpeg_quality[0], p.jpeg_quality[1] + 1, (1,), generator=gen))
        # libjpeg runs on the CPU: the per-image code copied each chosen image there and back
        images[i : i + 1] = jpeg_roundtrip(images[i : i + 1].cpu(), quality).to(images.device)
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


def augment_batch(images: torch.Tensor, out_size: int, aug: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    b, _, side, _ = images.shape
    x01 = augment_acquisition(images, aug.acquisition, gen) if aug.acquisition else images.float() / 255.0
    geometry = draw_geometry(b, side, aug, gen)  # the geometric draws did not change with batching
    theta, bright, contrast = geometry[:, :6].view(b, 2, 3), geometry[:, 6], geometry[:, 7]
    grid = F.affine_grid(theta.to(images.device), [b, 1, out_size, out_size], align_corners=False)
    x = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (x * bright.to(images.device).view(b, 1, 1, 1)).clamp_(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast.to(images.device).view(b, 1, 1, 1) + mean).clamp_(0, 1)

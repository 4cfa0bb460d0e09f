"""The shift suite: named, deterministic re-processings of test images at three severities
(ImageNet-C style, Hendrycks & Dietterich 2019), in six families.

Each shift maps uint8 (N, S, S) grayscale images to uint8 images of the same shape, and is a
pure function of (images, severity): the same call gives the same pixels. Transforms come from
the field's libraries where they have them, each named in `Shift.library`:
OpenCV (resampling, JPEG, CLAHE, histogram equalisation, blur), scikit-image (Butterworth
filters, unsharp masking, percentile windows, wavelet denoising over PyWavelets), TorchIO
(bias field, ghosting, motion, k-space spikes) and MONAI (Gaussian and Rician noise); Gibbs
ringing follows MONAI's definition with SciPy's FFT (MONAI's own was 100x slower here).

Severities are what other scanners and export pipelines do, from mild to strong. They were set
once from the transforms' own scales, not tuned against any model's accuracy. Families the
train-time augmentation draws from (`acquisition.TRAINED_FAMILIES`) are reported as "seen", the
others as "held out": robustness on those is generalisation, not having seen the transform.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .augment import TRAINED_FAMILIES

SEVERITIES = (1, 2, 3)
# Threads each library (PyTorch, OpenCV, SimpleITK) may start inside one image's transform, while the suite
# runs a thread per core over the images; 0 leaves each at its own default, one per core, so that 16 cores
# could run 16 x 16 threads. All 75 (shift, severity) pairs give the same pixels either way (328 test images
# compared); on a 2-core AMD EPYC the 75 pairs over 1,311 images took 79.8 and 75.7 s against 81.1 and 84.9 s
# with the libraries' defaults (scripts/shift_transform_times.py --inner-threads 0, alternated twice).
INNER_THREADS = 1


@contextlib.contextmanager
def library_threads(n: int) -> Iterator[None]:
    """PyTorch's, OpenCV's and SimpleITK's thread pools held to `n` threads each (0: as they are), restored
    after. One holder at a time: PyTorch keeps its count per thread (the caller's, and the default that the
    pool's new threads take), the others per process, so the suite transforms in one thread at a time
    (robustness.shift_table)."""
    if n <= 0:
        yield
        return
    import cv2
    import torch

    try:
        import SimpleITK as sitk  # TorchIO resamples through it (the motion artifact)
    except ImportError:
        sitk = None
    before = (
        torch.get_num_threads(),
        cv2.getNumThreads(),
        sitk and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
    )
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    if sitk:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        if sitk:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[2])


@dataclass(frozen=True)
class Shift:
    name: str
    family: str
    params: tuple  # the parameter at severity 1, 2, 3
    fn: Callable[[np.ndarray, object, int], np.ndarray]  # (one uint8 image, parameter, seed) -> uint8 image
    library: str
    unit: str = ""  # what the parameter means, for tables
    batched: bool = False  # fn takes the whole (N, S, S) stack at once

    @property
    def seen_in_training(self) -> bool:
        return self.family in TRAINED_FAMILIES

    def __call__(self, images: np.ndarray, severity: int) -> np.ndarray:
        """uint8 (N, S, S) -> uint8 (N, S, S); image i draws any randomness from seed i."""
        from concurrent.futures import ThreadPoolExecutor

        param = self.params[severity - 1]
        images = np.ascontiguousarray(images)
        if self.batched:
            return self.fn(images, param, 0)
        # OpenCV, NumPy and torch release the GIL: a thread per core, each library single-threaded inside it
        with library_threads(INNER_THREADS), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return (
                np.stack(list(pool.map(lambda i: self.fn(images[i], param, i), range(len(images)))))
                if len(images)
                else images.copy()
            )


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --- resolution -------------------------------------------------------------------------------
def _resample(down: int, up: int):
    import cv2

    def fn(im, side, _seed):
        size = im.shape[-1]
        return cv2.resize(cv2.resize(im, (side, side), interpolation=down), (size, size), interpolation=up)

    return fn


def _resave_224_jpeg(im, quality, _seed):
    import cv2

    size = im.shape[-1]
    small = cv2.resize(im, (224, 224), interpolation=cv2.INTER_AREA)
    decoded = cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)
    return cv2.resize(decoded, (size, size), interpolation=cv2.INTER_LINEAR)


# --- compression --------------------------------------------------------------------------------
def _jpeg(im, quality, _seed):
    import cv2

    return cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


# --- intensity --------------------------------------------------------------------------------
def _gamma(im, gamma, _seed):
    table = _u8(255.0 * (np.arange(256) / 255.0) ** gamma)
    return table[im]


def _brightness_contrast(im, alpha_beta, _seed):
    import cv2

    alpha, beta = alpha_beta
    return cv2.convertScaleAbs(im, alpha=alpha, beta=beta)


def _window(im, upper, _seed):
    from skimage.exposure import rescale_intensity

    return rescale_intensity(im, in_range=(0, upper), out_range=(0, 255)).astype(np.uint8)


def _percentile_clip(im, pct, _seed):
    from skimage.exposure import rescale_intensity

    lo, hi = np.percentile(im, (pct, 100 - pct))
    return rescale_intensity(im, in_range=(lo, max(hi, lo + 1)), out_range=(0, 255)).astype(np.uint8)


def _hist_equalize(im, weight, _seed):
    import cv2

    return _u8((1 - weight) * im.astype(np.float32) + weight * cv2.equalizeHist(im).astype(np.float32))


def _clahe(im, clip_tiles, _seed):
    import cv2

    clip, tiles = clip_tiles
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(im)


# --- frequency --------------------------------------------------------------------------------
def _butterworth_lowpass(im, cutoff, _seed):
    from skimage.filters import butterworth

    return _u8(butterworth(im.astype(np.float32), cutoff_frequency_ratio=cutoff, high_pass=False, order=2.0, npad=16))


def _butterworth_highpass(im, weight, _seed):
    """A Fourier high-pass blended in: `weight` of the low-frequency content (below 2 % of the
    sampling rate) removed, as an over-eager edge-enhancing reconstruction filter does."""
    from skimage.filters import butterworth

    x = im.astype(np.float32)
    high = butterworth(x, cutoff_frequency_ratio=0.02, high_pass=True, order=2.0, npad=16)
    return _u8((1 - weight) * x + weight * (high + x.mean()))


def _gaussian_blur(im, sigma, _seed):
    import cv2

    return cv2.GaussianBlur(im, (0, 0), sigmaX=sigma)


def _unsharp(im, amount, _seed):
    from skimage.filters import unsharp_mask

    return _u8(255 * unsharp_mask(im, radius=2.0, amount=amount))


def _wavelet_denoise(im, sigma, _seed):
    from skimage.restoration import denoise_wavelet

    return _u8(
        255
        * denoise_wavelet(im / 255.0, sigma=sigma, wavelet="db2", mode="soft", method="BayesShrink", rescale_sigma=True)
    )


# --- MR acquisition artifacts -----------------------------------------------------------------
def _torchio(transform_factory):
    """Apply a TorchIO transform to one 2-D slice, seeded per image.

    The slice goes in as a 1 x 1 x H x W volume: TorchIO's k-space transforms fill k-space along the last
    spatial axis, which must be one of the image's own (see `_motion`). Randomness comes from a NumPy
    generator seeded with the image's index and is handed to TorchIO as explicit parameters, never drawn
    from torch's global generator, which the suite's worker threads would share."""

    def fn(im, param, seed):
        import torch
        import torchio as tio

        image = tio.ScalarImage(tensor=torch.from_numpy(im.astype(np.float32))[None, None])
        out = transform_factory(param, np.random.default_rng(seed))(image).data[0, 0].numpy()
        return _u8(out)

    return fn


@functools.lru_cache(maxsize=8)
def _bias_field_map(c: float, height: int, width: int) -> np.ndarray:
    from torchio import BiasField

    # every coefficient of the order-3 polynomial at +c: one smooth field, the same for every image, so it
    # is computed once per (c, size) by TorchIO's own generator (28 s of the full suite when made per image)
    return BiasField.generate_bias_field(np.zeros((1, 1, height, width)), 3, [c] * 20)[0]


def _bias_field(im, c, _seed):
    """TorchIO's BiasField (image times the exponentiated polynomial), pixel for pixel."""
    return _u8(im.astype(np.float32) * _bias_field_map(c, *im.shape))


def _ghosting(intensity, _rng):
    import torchio as tio

    return tio.Ghosting(num_ghosts=4, axis=1, intensity=intensity, restore=0.02)


def _motion(amount, rng):
    """Patient motion during the acquisition (Shaw et al. 2019, TorchIO's `Motion`): k-space is filled
    column segment by column segment, the central segment from the image as it is and the outer ones from a
    copy rotated in-plane by `degrees` and shifted by `px` along both axes. The two switch times are drawn per
    image the way TorchIO's `RandomMotion` draws them (evenly spaced, each moved by up to 30 % of a step).
    TorchIO fills k-space along the last spatial axis; an earlier version of this shift handed it the slice
    as 1 x H x W x 1, so the whole spectrum came from the moved copy: a rigid move, not an artifact."""
    import torchio as tio

    degrees, px = amount
    n_moves = 2
    step = 1 / (n_moves + 1)
    times = step * np.arange(1, n_moves + 1) + rng.uniform(-0.3 * step, 0.3 * step, n_moves)
    return tio.Motion(
        degrees=np.array([[degrees, 0.0, 0.0]] * n_moves),  # about the slice's normal: in-plane
        translation=np.array([[0.0, px, px]] * n_moves),
        times=times,
        image_interpolation="linear",
    )


def _spike(intensity, _rng):
    import torchio as tio

    return tio.Spike(spikes_positions=np.array([[0.0, 0.08, 0.11]]), intensity=intensity)


def _gibbs_stack(images, alpha, _seed):
    """Gibbs ringing: k-space truncated to its central (1 - alpha) fraction, as MONAI's
    GibbsNoise defines it. Written with SciPy's FFT because MONAI's transform took 0.46 s per
    256-px image here (20 minutes per severity on the test split); this takes about 2 ms (NumPy's
    single-threaded FFT 5-11 ms)."""
    import scipy.fft

    workers = os.cpu_count() or 1
    k = np.fft.fftshift(scipy.fft.fft2(images.astype(np.float64), workers=workers), axes=(-2, -1))
    side = images.shape[-1]
    radius = (1 - alpha) * side * np.sqrt(2) / 2  # MONAI's circular mask
    yy, xx = np.ogrid[:side, :side]
    mask = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2) <= radius
    return _u8(scipy.fft.ifft2(np.fft.ifftshift(k * mask, axes=(-2, -1)), workers=workers).real)


def _monai(transform_factory):
    def fn(im, param, seed):
        import torch

        transform = transform_factory(param)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        # a torch tensor, not a NumPy array: MONAI's Gibbs filter took 10x longer on NumPy input here
        out = transform(torch.from_numpy(im.astype(np.float32))[None])
        return _u8(np.asarray(out)[0])

    return fn


# --- noise ------------------------------------------------------------------------------------
def _rician(sigma):
    from monai.transforms import RandRicianNoise

    return RandRicianNoise(prob=1.0, mean=0.0, std=255 * sigma, sample_std=False)


def _gaussian_noise(sigma):
    from monai.transforms import RandGaussianNoise

    return RandGaussianNoise(prob=1.0, mean=0.0, std=255 * sigma, sample_std=False)


def _suite() -> dict[str, Shift]:
    import cv2

    # fmt: off
    shifts = [
        Shift("resample_area", "resolution", (160, 128, 96), _resample(cv2.INTER_AREA, cv2.INTER_LINEAR), "OpenCV", "px"),
        Shift("resample_bicubic", "resolution", (160, 128, 96), _resample(cv2.INTER_CUBIC, cv2.INTER_CUBIC), "OpenCV", "px"),
        # 160/112/80: 128 px (an exact halving) aliases less than 160, which would break the severity order
        Shift("resample_nearest", "resolution", (160, 112, 80), _resample(cv2.INTER_NEAREST, cv2.INTER_NEAREST), "OpenCV", "px"),
        Shift("resave_224_jpeg", "resolution", (90, 75, 50), _resave_224_jpeg, "OpenCV", "JPEG quality at 224 px"),
        Shift("jpeg", "compression", (50, 30, 15), _jpeg, "OpenCV (libjpeg)", "quality"),
        Shift("gamma_up", "intensity", (1.2, 1.4, 1.7), _gamma, "NumPy lookup table", "gamma"),
        Shift("gamma_down", "intensity", (0.85, 0.7, 0.55), _gamma, "NumPy lookup table", "gamma"),
        Shift(
            "brightness_contrast",
            "intensity",
            ((0.85, 12), (0.7, 24), (0.55, 36)),
            _brightness_contrast,
            "OpenCV",
            "(contrast, +brightness)",
        ),
        Shift("window", "intensity", (220, 185, 150), _window, "scikit-image", "upper window level (saturates above)"),
        Shift("percentile_clip", "intensity", (1, 3, 6), _percentile_clip, "scikit-image", "% clipped at each end"),
        Shift("hist_equalize", "intensity", (0.33, 0.66, 1.0), _hist_equalize, "OpenCV", "blend weight"),
        Shift("clahe", "intensity", ((1.5, 8), (2.5, 8), (4.0, 8)), _clahe, "OpenCV", "(clip limit, tiles)"),
        # a 16 x 16 grid of 16-px tiles at clahe's clip limits, so the two never coincide (a grid that
        # grew with severity met clahe's 8 x 8 at the middle one); at a fixed clip, finer grids do not
        # change the pixels more (mean |change| over every 40th test image at clip 2.5: 23.5, 24.4, 23.5
        # grey levels for 8, 16, 32 tiles), so the grid cannot carry the severity
        Shift("clahe_grid", "intensity", ((1.5, 16), (2.5, 16), (4.0, 16)), _clahe, "OpenCV", "(clip limit, tiles)"),
        Shift("butterworth_lowpass", "frequency", (0.3, 0.2, 0.12), _butterworth_lowpass, "scikit-image", "cutoff / sampling rate"),
        Shift("butterworth_highpass", "frequency", (0.3, 0.5, 0.7), _butterworth_highpass, "scikit-image", "weight of low band removed"),
        Shift("gaussian_blur", "frequency", (0.7, 1.2, 2.0), _gaussian_blur, "OpenCV", "sigma px"),
        Shift("unsharp_mask", "frequency", (1.0, 2.0, 3.0), _unsharp, "scikit-image", "amount (radius 2)"),
        Shift("wavelet_denoise", "frequency", (0.03, 0.06, 0.1), _wavelet_denoise, "scikit-image + PyWavelets", "noise sigma"),
        Shift("bias_field", "artifact", (0.15, 0.3, 0.45), _bias_field, "TorchIO", "polynomial coefficient"),
        Shift("ghosting", "artifact", (0.3, 0.5, 0.8), _torchio(_ghosting), "TorchIO", "ghost intensity"),
        Shift("motion", "artifact", ((1, 1), (2, 2), (4, 3)), _torchio(_motion), "TorchIO", "(degrees, px)"),
        Shift("kspace_spike", "artifact", (0.3, 0.6, 1.0), _torchio(_spike), "TorchIO", "spike intensity"),
        Shift(
            "gibbs_ringing",
            "artifact",
            (0.6, 0.75, 0.85),
            _gibbs_stack,
            "SciPy FFT (MONAI's definition)",
            "k-space fraction truncated",
            batched=True,
        ),
        Shift("gaussian_noise", "noise", (0.02, 0.04, 0.07), _monai(_gaussian_noise), "MONAI", "sigma / full scale"),
        Shift("rician_noise", "noise", (0.02, 0.04, 0.07), _monai(_rician), "MONAI", "sigma / full scale"),
    ]
    # fmt: on
    return {s.name: s for s in shifts}


SHIFTS: dict[str, Shift] = _suite()
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(s.family for s in SHIFTS.values()))

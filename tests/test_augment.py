"""Train-time acquisition augmentation: deterministic, in range, and it really changes images."""

import numpy as np
import pytest
import torch

from brainlib.augment import AcquisitionParams, augment_acquisition, jpeg_roundtrip, resample
from brainlib.data import load_gray


@pytest.fixture
def batch(fixture_root):
    files = sorted(fixture_root.rglob("*.jpg"))[:12]
    return torch.from_numpy(np.stack([load_gray(f, 64) for f in files]))[:, None]


def test_same_generator_seed_same_images_and_range_kept(batch):
    p = AcquisitionParams(resolution_px=(16, 56))
    a = augment_acquisition(batch, p, torch.Generator().manual_seed(3))
    b = augment_acquisition(batch, p, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == batch.shape
    assert 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, augment_acquisition(batch, p, torch.Generator().manual_seed(4)))


def test_probability_zero_is_the_identity_and_one_changes_every_image(batch):
    off = AcquisitionParams(p_resolution=0, p_jpeg=0, p_gamma=0, p_window=0, p_clahe=0, p_equalize=0, p_noise=0)
    assert torch.equal(augment_acquisition(batch, off, torch.Generator().manual_seed(0)), batch.float() / 255)
    for field in ("p_resolution", "p_jpeg", "p_gamma", "p_clahe", "p_equalize", "p_noise"):
        on = AcquisitionParams(**{**off.__dict__, field: 1.0, "resolution_px": (16, 32), "gamma": (0.5, 0.6)})
        out = augment_acquisition(batch, on, torch.Generator().manual_seed(0))
        changed = (out - batch.float() / 255).abs().flatten(1).max(1).values > 1 / 255
        assert changed.all(), field


def test_resample_and_jpeg_lose_detail_as_they_should(batch):
    x = batch.float() / 255
    coarse, fine = resample(x, 16, "area"), resample(x, 48, "area")
    assert (coarse - x).abs().mean() > (fine - x).abs().mean() > 0
    low, high = jpeg_roundtrip(batch, 10), jpeg_roundtrip(batch, 90)
    assert low.dtype == torch.uint8 and low.shape == batch.shape
    assert (low.float() - batch.float()).abs().mean() > (high.float() - batch.float()).abs().mean()

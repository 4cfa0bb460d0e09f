"""The shift suite on the fixture: every shift deterministic, shape/dtype/range kept, stronger with
severity; families declared, seen vs held out as the augmentation says."""

import numpy as np
import pytest

from brainlib.augment import TRAINED_FAMILIES
from brainlib.data import load_gray
from brainlib.shifts import FAMILIES, SEVERITIES, SHIFTS


@pytest.fixture(scope="module")
def images():
    from pathlib import Path

    files = sorted((Path(__file__).parent / "fixtures" / "data" / "Testing").rglob("*.jpg"))[:6]
    return np.stack([load_gray(f, 256) for f in files])  # the cache size: what the suite sees in evaluation


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_is_deterministic_keeps_shape_and_grows_with_severity(name, images):
    shift = SHIFTS[name]
    outs = [shift(images, s) for s in SEVERITIES]
    for out in outs:
        assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(shift(images, 2), outs[1])  # same call, same pixels
    assert np.array_equal(shift(images[:2], 2), outs[1][:2])  # an image's result does not depend on its batch
    change = [np.abs(out.astype(int) - images).mean() for out in outs]
    assert change[0] > 0.3, f"{name} at severity 1 leaves the images as they were"
    assert change[0] <= change[1] <= change[2], f"{name}: severity order broken: {change}"


@pytest.mark.parametrize("severity", SEVERITIES)
def test_no_two_shifts_are_the_same_transform(severity, images):
    # two shifts with equal outputs would count one transform twice in the suite's mean
    outs = {name: shift(images, severity) for name, shift in SHIFTS.items()}
    names = list(outs)
    same = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if np.array_equal(outs[a], outs[b])]
    assert not same, f"severity {severity}: identical shifts {same}"


def test_families_are_declared_and_two_are_held_out_of_training():
    assert set(FAMILIES) == {"resolution", "compression", "intensity", "frequency", "artifact", "noise"}
    assert set(TRAINED_FAMILIES) < set(FAMILIES)
    held_out = set(FAMILIES) - set(TRAINED_FAMILIES)
    assert held_out == {"frequency", "artifact"}
    assert all(SHIFTS[n].seen_in_training == (SHIFTS[n].family in TRAINED_FAMILIES) for n in SHIFTS)
    assert all(len(s.params) == 3 for s in SHIFTS.values())


def test_gibbs_ringing_matches_monais_definition(images):
    import torch
    from monai.transforms import GibbsNoise

    ours = SHIFTS["gibbs_ringing"](images, 2)
    theirs = np.asarray(
        GibbsNoise(alpha=SHIFTS["gibbs_ringing"].params[1])(torch.from_numpy(images.astype(np.float32)))
    )
    assert np.abs(np.clip(np.rint(theirs), 0, 255) - ours).max() <= 1


def test_motion_is_a_kspace_artifact_not_a_rigid_move(images):
    """Patient motion keeps the centre of k-space (the columns acquired while the head held still) and
    corrupts the outer columns; a rigid move of the whole slice changes the centre too. The switch times
    are drawn per image, so the same slice at two places in a batch gets two different artifacts."""
    out = SHIFTS["motion"](images, 3)
    side = images.shape[-1]
    centre, band = side // 2, int(0.06 * side)  # inside the central segment for any drawn switch times
    inner, outer = slice(centre - band, centre + band), np.r_[: centre - 3 * band, centre + 3 * band : side]
    for image, moved in zip(images, out):
        before, after = (np.fft.fftshift(np.fft.fft2(x.astype(float))) for x in (image, moved))
        change = np.abs(after - before)
        assert change[:, inner].mean() < 0.05 * np.abs(before[:, inner]).mean()
        assert change[:, outer].mean() > 0.3 * np.abs(before[:, outer]).mean()
    twice = SHIFTS["motion"](np.stack([images[0], images[0]]), 3)
    assert not np.array_equal(twice[0], twice[1])


def test_bias_field_is_torchios_transform_pixel_for_pixel(images):
    """The field is computed once per size and reused; the pixels must be what TorchIO's BiasField gives."""
    import torch
    import torchio as tio

    c = SHIFTS["bias_field"].params[2]
    ours = SHIFTS["bias_field"](images, 3)
    for image, got in zip(images, ours):
        volume = tio.ScalarImage(tensor=torch.from_numpy(image.astype(np.float32))[None, None])
        theirs = tio.BiasField(coefficients=[c] * 20, order=3)(volume).data[0, 0].numpy()
        assert np.array_equal(np.clip(np.rint(theirs), 0, 255).astype(np.uint8), got)


def test_each_library_held_to_one_thread_inside_the_suites_threads_gives_the_same_pixels(images, monkeypatch):
    """The suite holds PyTorch, OpenCV and SimpleITK to one thread inside its thread per core (16 x 16 threads
    on 16 cores otherwise): every shift's pixels are those of the libraries' own thread pools, and the pools
    are as they were after a shift."""
    import cv2
    import torch

    from brainlib import shifts

    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    held = {(name, s): shift(images, s) for name, shift in SHIFTS.items() for s in (1, 3)}
    assert (torch.get_num_threads(), cv2.getNumThreads()) == (torch_threads, cv2_threads)
    monkeypatch.setattr(shifts, "INNER_THREADS", 0)
    differing = [key for key, out in held.items() if not np.array_equal(out, SHIFTS[key[0]](images, key[1]))]
    assert not differing
    with shifts.library_threads(1):
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert (torch.get_num_threads(), cv2.getNumThreads()) == (torch_threads, cv2_threads)

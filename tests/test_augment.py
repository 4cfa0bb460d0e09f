"""Train-time augmentation: deterministic, in range, it really changes images, and the batched
implementation is the per-image one it replaced, without waiting on the device."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from brainlib.augment import (
    AcquisitionParams,
    AugmentParams,
    apply_batch,
    augment_acquisition,
    augment_batch,
    jpeg_roundtrip,
    prepare_batch,
    resample,
)
from brainlib.data import load_gray
from brainlib.loader import CachedBatches, to_model_input


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


# --- the batched augmentation against the per-image one it replaced (tests/augment_reference.py) ---

EVERY_TRANSFORM = AcquisitionParams(
    p_resolution=1, p_jpeg=1, p_gamma=1, p_window=1, p_clahe=1, p_equalize=1, p_noise=1, resolution_px=(16, 56)
)


@pytest.fixture
def images(fixture_root):
    files = sorted(fixture_root.rglob("*.jpg"))[:24]
    return torch.from_numpy(np.stack([load_gray(f, 64) for f in files]))[:, None]


@pytest.mark.parametrize("acquisition", [AcquisitionParams(), EVERY_TRANSFORM], ids=["default", "every-transform"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_augmentation_draws_and_outputs_what_the_per_image_one_did(images, acquisition, seed):
    import augment_reference as reference

    aug = AugmentParams(acquisition=acquisition)
    old_gen, new_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    old = reference.augment_batch(images, 48, aug, old_gen)
    new = augment_batch(images, 48, aug, new_gen)
    assert torch.equal(old_gen.get_state(), new_gen.get_state())  # the same numbers drawn, no more, no fewer
    assert (old - new).abs().max() <= 1e-5


def test_jpeg_round_trips_are_the_same_bytes(images):
    import augment_reference as reference

    only_jpeg = AcquisitionParams(**{**EVERY_TRANSFORM.__dict__, "p_resolution": 0, "p_gamma": 0, "p_window": 0})
    only_jpeg = AcquisitionParams(**{**only_jpeg.__dict__, "p_clahe": 0, "p_equalize": 0, "p_noise": 0})
    old = reference.augment_acquisition(images, only_jpeg, torch.Generator().manual_seed(7))
    prepared = prepare_batch(images, torch.arange(len(images)), AugmentParams(acquisition=only_jpeg),
                             torch.Generator().manual_seed(7))  # fmt: skip
    assert prepared.draw.jpeg_idx == list(range(len(images)))
    assert torch.equal(prepared.jpeg, (old * 255).round().to(torch.uint8))


def test_training_batches_are_the_per_image_augmentation_of_the_shuffled_rows(images):
    import augment_reference as reference

    aug = AugmentParams(acquisition=AcquisitionParams())
    batches = CachedBatches(images[:, 0].numpy(), np.zeros(len(images)), 8, 48, train=True, aug=aug, seed=3)
    batches.set_epoch(2)
    gen = torch.Generator().manual_seed((3 * 1_000_003 + 2) * 64 + 1)
    order = batches._indices()
    for k, (x, _) in enumerate(batches):
        expected = reference.augment_batch(images[order[8 * k : 8 * k + 8]], 48, aug, gen)
        assert torch.equal(x, to_model_input(expected))


def test_batches_prepared_ahead_in_a_thread_are_the_same_batches(images):
    aug = AugmentParams(acquisition=EVERY_TRANSFORM)
    kwargs = dict(train=True, aug=aug, seed=4)
    inline = CachedBatches(images[:, 0].numpy(), np.arange(len(images)) % 4, 8, 48, **kwargs)
    ahead = CachedBatches(images[:, 0].numpy(), np.arange(len(images)) % 4, 8, 48, **kwargs)
    ahead.prefetch = "thread"  # the GPU path's producer thread, on the CPU
    for (x, y), (x2, y2) in zip(inline, ahead, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


SYNCING_OPS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "_unique2", "unique_dim", "equal"}


class _OpLog(TorchDispatchMode):
    """Every aten op called, and which of them would make a GPU wait: a scalar read, an op whose
    output shape depends on the data, or indexing with a boolean mask."""

    def __init__(self):
        super().__init__()
        self.ops, self.waits = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops.append(name)
        bool_index = name in ("index", "index_put_", "index_put") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or ())
        )
        if name in SYNCING_OPS or bool_index:
            self.waits.append(name)
        return func(*args, **(kwargs or {}))


def test_an_augmented_batch_reads_nothing_back_from_the_device(images):
    import augment_reference as reference

    aug = AugmentParams(acquisition=EVERY_TRANSFORM)
    prepared = prepare_batch(images, torch.arange(len(images)), aug, torch.Generator().manual_seed(0))
    with _OpLog() as log:
        apply_batch(images, prepared, 48, aug)
    assert len(log.ops) > 100 and log.waits == []
    with _OpLog() as control:  # the per-image version did wait, so the log can see it
        reference.augment_batch(images, 48, aug, torch.Generator().manual_seed(0))
    assert "_local_scalar_dense" in control.waits and "nonzero" in control.waits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_training_step_on_cuda_never_synchronises(images):
    aug = AugmentParams(acquisition=EVERY_TRANSFORM)
    batches = CachedBatches(images[:, 0].numpy(), np.zeros(len(images)), 8, 48, train=True, aug=aug, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outputs = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(outputs) == 3 and outputs[0][0].is_cuda


def test_batches_prepared_ahead_in_a_worker_process_are_the_same_batches(images, monkeypatch):
    """The worker holds the epoch's generator and draws in batch order: a seed gives the same batches as in
    line, every epoch; a consumer that stops early leaves no worker behind. The in-line epochs have used
    the OpenMP pool before the worker forks: a worker that entered it hangs, and fails here in 30 s."""
    import multiprocessing

    from brainlib import loader

    monkeypatch.setattr(loader, "WORKER_SILENCE_S", 30.0)
    aug = AugmentParams(acquisition=EVERY_TRANSFORM)
    kwargs = dict(train=True, aug=aug, seed=4)
    inline = CachedBatches(images[:, 0].numpy(), np.arange(len(images)) % 4, 8, 48, **kwargs)
    ahead = CachedBatches(images[:, 0].numpy(), np.arange(len(images)) % 4, 8, 48, **kwargs)
    ahead.prefetch = "process"
    for epoch in (0, 1):
        inline.set_epoch(epoch)
        ahead.set_epoch(epoch)
        for (x, y), (x2, y2) in zip(inline, ahead, strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    first = next(iter(ahead))  # a consumer that stops after one batch
    del first
    assert not multiprocessing.active_children(), "the worker outlived its epoch"


def _a_worker_that_dies(*args) -> None:
    import os

    os._exit(9)  # as the out-of-memory killer would leave it: no word on the queue


def _a_stuck_worker(*args) -> None:
    import time

    time.sleep(30)


@pytest.mark.parametrize(
    "worker, message",
    [(_a_worker_that_dies, "stopped \\(exit code 9\\)"), (_a_stuck_worker, "sent no batch in 2 s")],
    ids=["died", "stuck"],
)
def test_a_worker_process_that_dies_or_hangs_stops_the_epoch_with_the_reason(images, monkeypatch, worker, message):
    """Without a check, the training loop would wait on the worker's queue for ever. An expected error: the
    command line prints it as one line."""
    import multiprocessing

    from brainlib import loader
    from brainlib.errors import BrainlibError

    monkeypatch.setattr(loader, "_prepare_epoch", worker)
    monkeypatch.setattr(loader, "WORKER_SILENCE_S", 2.0)
    batches = CachedBatches(images[:, 0].numpy(), np.zeros(len(images)), 8, 48, train=True, aug=AugmentParams())
    batches.prefetch = "process"
    with pytest.raises(BrainlibError, match=message):
        list(batches)
    assert not multiprocessing.active_children(), "the worker outlived its epoch"

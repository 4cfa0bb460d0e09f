import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from brainlib import augment, cache, data, loader


def test_reference_transforms_shape_dtype_range(fixture_root):
    img = data.to_rgb(data.open_image(next((fixture_root / "Training" / "glioma").glob("*.jpg"))))
    for train in (True, False):
        x = augment.reference_transforms(train)(img)
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() > 0


def test_cached_batches_shape_dtype_range():
    images = np.random.default_rng(0).integers(0, 256, (10, 64, 64), dtype=np.uint8)
    for train in (True, False):
        batches = list(loader.CachedBatches(images, np.arange(10) % 4, 4, image_size=48, train=train, seed=1))
        assert [len(y) for _, y in batches] == [4, 4, 2]
        x, _ = batches[0]
        assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x.min() >= -1.0 and x.max() <= 1.0


def test_augmentation_is_seeded_and_per_image():
    images = np.tile(np.random.default_rng(1).integers(0, 256, (1, 64, 64), dtype=np.uint8), (8, 1, 1))
    a = next(iter(loader.CachedBatches(images, np.zeros(8), 8, 48, train=True, seed=5)))[0]
    b = next(iter(loader.CachedBatches(images, np.zeros(8), 8, 48, train=True, seed=5)))[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # same picture, different draws


def test_identity_augmentation_equals_plain_resize_and_flip_mirrors():
    img = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 1, 32, 32), dtype=np.uint8))
    gen = torch.Generator().manual_seed(0)
    none = augment.AugmentParams(
        flip_p=0.0, rotation_deg=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), brightness=0, contrast=0
    )
    out = augment.augment_batch(img, 32, none, gen)
    assert torch.allclose(out, img.float() / 255, atol=1e-5)
    flipped = augment.augment_batch(img, 32, augment.AugmentParams(**{**none.__dict__, "flip_p": 1.0}), gen)
    assert torch.allclose(flipped, torch.flip(img.float() / 255, dims=[-1]), atol=1e-5)


def _manifest(root):
    files = sorted(root.rglob("*.jpg"))[:6]
    return pd.DataFrame(
        {"path": [p.relative_to(root).as_posix() for p in files], "file_sha256": [str(i) for i in range(len(files))]}
    )


def test_cache_is_reused_and_keyed_by_content_and_size(fixture_root, tmp_path):
    m = _manifest(fixture_root)
    first = cache.build_or_load_cache(m, fixture_root, 32, tmp_path, progress=False)
    assert first.shape == (6, 32, 32) and first.dtype == np.uint8
    again = cache.build_or_load_cache(m, fixture_root, 32, tmp_path, progress=False)
    assert isinstance(again, np.memmap) and np.array_equal(first, again)
    cache.build_or_load_cache(m, fixture_root, 48, tmp_path, progress=False)
    changed = m.assign(file_sha256=m["file_sha256"].where(m.index != 0, "edited"))
    cache.build_or_load_cache(changed, fixture_root, 32, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert cache.cache_key(m, 32) != cache.cache_key(changed, 32) != cache.cache_key(m, 48)


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "drop_sidecar"])
def test_corrupt_cache_is_detected_and_rebuilt(fixture_root, tmp_path, damage):
    m = _manifest(fixture_root)
    good = np.array(cache.build_or_load_cache(m, fixture_root, 32, tmp_path, progress=False))
    npy = next(tmp_path.glob("*.npy"))
    raw = npy.read_bytes()
    if damage == "truncate":
        npy.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip_bytes":
        npy.write_bytes(raw[:-10] + bytes(255 - b for b in raw[-10:]))
    else:
        next(tmp_path.glob("*.json")).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = cache.build_or_load_cache(m, fixture_root, 32, tmp_path, progress=False)
    assert np.array_equal(np.asarray(rebuilt), good)
    if damage != "drop_sidecar":
        assert any("corrupt" in str(w.message) for w in caught)


def test_cache_matches_load_gray(fixture_root, tmp_path):
    m = _manifest(fixture_root)
    images = cache.build_or_load_cache(m, fixture_root, 40, tmp_path, progress=False)
    assert np.array_equal(images[2], data.load_gray(fixture_root / m["path"][2], 40))


def test_augment_false_trains_on_plain_resized_images():
    from brainlib.augment import augment_params
    from brainlib.config import Config

    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    aug = augment_params(Config(augment=False))
    x, _ = next(iter(loader.CachedBatches(images, np.zeros(4), 4, 32, train=True, aug=aug, seed=0)))
    order = loader.CachedBatches(images, np.zeros(4), 4, 32, train=True, seed=0)._indices()
    assert torch.allclose(
        x[:, :1], loader.normalize(torch.from_numpy(images[order.numpy()]).float()[:, None] / 255), atol=1e-5
    )

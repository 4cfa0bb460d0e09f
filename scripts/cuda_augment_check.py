"""The training augmentation on a GPU: one epoch-slice of the default recipe's training batches
under CUDA's sync debug mode set to "error" (any host synchronisation raises), then the
augmentation's throughput on batches of 64 stored images: the batched version (brainlib.augment,
through the training loader, the next batch prepared in a host thread, and again in line) against
the per-image version it replaced (tests/augment_reference.py), and the host's half of a batch
alone. Runs on a CPU too (no sync check there).

    python scripts/cuda_augment_check.py [--batches 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from brainlib.augment import AcquisitionParams, AugmentParams, prepare_batch  # noqa: E402
from brainlib.loader import CachedBatches  # noqa: E402


def images_for(n: int, side: int = 256) -> np.ndarray:
    """Stored-image-like inputs: smooth blobs on black with noise (random pixels would make every
    JPEG round trip its slowest and every histogram flat)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] / side
    out = np.empty((n, side, side), np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.4)
        disc = np.clip(1 - ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2, 0, 1) * 200
        out[i] = np.clip(disc + rng.normal(0, 8, (side, side)), 0, 255).astype(np.uint8)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    import augment_reference as reference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    aug = AugmentParams(acquisition=AcquisitionParams())
    every = AcquisitionParams(p_resolution=1, p_jpeg=1, p_gamma=1, p_window=1, p_clahe=1, p_equalize=1, p_noise=1)
    images = images_for(64 * args.batches)
    labels = np.zeros(len(images), int)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}

    if device == "cuda":  # every transform on, so every code path runs under the check
        checked = CachedBatches(
            images[:256], labels[:256], 64, 224, train=True, aug=AugmentParams(acquisition=every), device=device
        )
        list(checked)  # warm-up: allocations, kornia, pinned buffers
        sync(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            n = sum(len(x) for x, _ in checked)
            result["sync_check"] = f"ok: {n} images augmented with no host synchronisation"
        except RuntimeError as err:
            result["sync_check"] = f"FAILED: {str(err).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        print(result["sync_check"], flush=True)

    batches = CachedBatches(images, labels, 64, 224, train=True, aug=aug, device=device)
    list(zip(range(3), batches))  # warm-up
    rates = {}
    for prefetch in ("thread", "process", "off"):  # the next batch prepared in a host thread, a worker, in line
        batches.prefetch = prefetch
        sync(device)
        t0 = time.perf_counter()
        for x, _ in batches:
            x.sum()  # a consumer of each batch, as a training step would be
        sync(device)
        rates[prefetch] = len(images) / (time.perf_counter() - t0)
    batched = rates["thread" if device == "cuda" else "off"]
    # the host's half alone (draws, JPEG round trips, packing, pinning): the ceiling it sets on the whole
    host_images, gen = torch.from_numpy(images).unsqueeze(1), torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for k in range(args.batches):
        prepare_batch(host_images, torch.arange(64 * k, 64 * k + 64), aug, gen, pin=device == "cuda")
    result["host_prepare_ms_per_batch"] = round(1000 * (time.perf_counter() - t0) / args.batches, 2)
    result["batched_in_line_img_per_s"] = round(rates["off"])
    result["batched_in_a_process_img_per_s"] = round(rates["process"])

    stored = torch.from_numpy(images).unsqueeze(1).to(device)
    gen = torch.Generator().manual_seed(0)
    reference.augment_batch(stored[:64], 224, aug, gen)
    sync(device)
    t0 = time.perf_counter()
    for k in range(args.batches):
        reference.augment_batch(stored[64 * k : 64 * k + 64], 224, aug, gen).sum()
    sync(device)
    per_image = len(images) / (time.perf_counter() - t0)
    result |= {"batched_img_per_s": round(batched), "per_image_img_per_s": round(per_image), "batch": 64}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

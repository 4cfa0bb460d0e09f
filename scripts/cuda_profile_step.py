"""Where a training step's time goes: the training loop's own epoch function (brainlib.train)
over synthetic stored images (smooth blobs with noise), for a recipe, with its CUDA-graph step
where the device is CUDA, under torch.profiler. Prints the throughput with and without the
profiler (and, unprofiled, with the next batches prepared in a worker process instead of a host
thread), the top operators by their own GPU and host time, and the share of the wall clock the
GPU was busy.

    python scripts/cuda_profile_step.py --recipe reference --batches 40 [--compile] [--out prof.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.autograd import DeviceType

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from cuda_augment_check import images_for  # noqa: E402

from brainlib.augment import augment_params  # noqa: E402
from brainlib.config import RECIPES, Config  # noqa: E402
from brainlib.cuda_graphs import graph_training_step  # noqa: E402
from brainlib.loader import CachedBatches  # noqa: E402
from brainlib.models import create_model  # noqa: E402
from brainlib.train import make_scheduler, train_one_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="reference")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the step through torch.compile (inductor fuses BatchNorm, activations and pooling) instead of "
        "a CUDA graph of the eager model; the warm-up epoch's time, compilation included, is reported",
    )
    args = parser.parse_args()
    cfg = Config(**RECIPES[args.recipe])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    n = cfg.batch_size * args.batches
    # stored-image-like pixels: uniform noise made every JPEG round trip its slowest (the host's share)
    images = images_for(n, cfg.cache_size)
    batches = CachedBatches(
        images,
        rng.integers(0, 4, n),
        cfg.batch_size,
        cfg.image_size,
        train=True,
        aug=augment_params(cfg),
        device=device,
    )
    batches.drop_last = True
    model = create_model(cfg.model).to(device).to(memory_format=torch.channels_last)
    if args.compile:  # as train does with compile=True: no CUDA graph then
        step_model = torch.compile(model)
    else:
        step_model = graph_training_step(
            model, (cfg.batch_size, 3, cfg.image_size, cfg.image_size), device, cfg.precision
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device == "cuda" or None)
    scheduler = make_scheduler(cfg, optimizer, len(batches))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def epoch(k: int) -> float:
        batches.set_epoch(k)
        t0 = time.perf_counter()
        _, _, seen, _ = train_one_epoch(
            step_model, batches, optimizer, scheduler, loss_fn, device, k, False, precision=cfg.precision
        )
        if device == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - t0)

    t_warm = time.perf_counter()
    epoch(1)  # warm-up: kernels chosen, caches filled (and the step compiled, with --compile)
    warm_up_s = time.perf_counter() - t_warm
    plain = epoch(2)
    # the next batches prepared in a worker process instead of a host thread (same batches, loader.py)
    batches.prefetch = "process"
    in_a_process = epoch(3)
    batches.prefetch = "auto"
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
    )
    with torch.profiler.profile(activities=activities) as prof:
        profiled = epoch(4)
    events = prof.key_averages()
    if device == "cuda":
        # the kernels and copies themselves: an operator's own GPU time repeats its kernels' (a graph
        # replay's "Graphed" and every kernel in it), so a sum over all events counted most of them twice
        device_key = "self_device_time_total"
        on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    else:
        device_key, on_device = "self_cpu_time_total", list(events)
    by_device = sorted(on_device, key=lambda e: getattr(e, device_key, 0), reverse=True)[:20]
    by_host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    busy_us = sum(getattr(e, device_key, 0) for e in on_device)
    result = {
        "recipe": args.recipe,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "step": "torch.compile" if args.compile else "CUDA graph" if device == "cuda" else "eager",
        "warm_up_epoch_s": round(warm_up_s, 2),
        "img_per_s": round(plain),
        "img_per_s_prepared_in_a_process": round(in_a_process),
        "img_per_s_profiled": round(profiled),
        "device_busy_ms_per_step": round(busy_us / 1000 / len(batches), 3),
        "wall_ms_per_step_profiled": round(1000 * cfg.batch_size / profiled, 3),
        "top_device_ops_ms_per_step": {
            e.key: round(getattr(e, device_key, 0) / 1000 / len(batches), 4) for e in by_device
        },
        "top_host_ops_ms_per_step": {e.key: round(e.self_cpu_time_total / 1000 / len(batches), 4) for e in by_host},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

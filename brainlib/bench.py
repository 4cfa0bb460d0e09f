"""Training-throughput benchmark: the plain pipeline against brainlib's, in one process.

(a) plain: ImageFileDataset + DataLoader, PIL decode and torchvision.transforms.v2 per image
    every epoch, fp32, NCHW: how the reference trains.
(b) brainlib: decoded uint8 cache, batched tensor augmentation (one grid_sample), channels_last,
    bf16 autocast where supported (cfg.precision), torch.compile when cfg.compile, and on CUDA
    the training forward/backward replayed from CUDA graphs and AdamW's fused kernel, as `train`.
Same model, batch size, optimizer and augmentation semantics. Prints images/s and writes JSON.
Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .atomic import write_text
from .augment import augment_params, reference_transforms
from .config import Config
from .cpu_engine import as_scored, engine_for
from .cuda_graphs import GraphedTraining, graph_training_step
from .errors import DataError
from .infer import SCORING_PRECISION, autocast, predict_logits, setup_torch, use_bf16
from .loader import ImageFileDataset, load_run_data, split_batches
from .machine_load import busy_warning, machine_load
from .models import create_model, training_model


def _repeat(batches):
    """The batches again and again: a run folder with fewer batches than warm-up + timed steps
    (a small or `fast` run) is timed over its batches repeated, not stopped by StopIteration.
    A split with no whole batch at all is an error, not an endless loop."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise DataError("nothing to benchmark: this split has no whole batch (fewer images than batch_size?)")


def _time_training(
    model: nn.Module,
    batches,
    steps: int,
    warmup: int,
    device: str,
    precision: str = "fp32",
    counters: dict | None = None,
    fused: bool = False,
) -> float:
    """Train for warmup + steps batches; images/s over the timed steps (data loading included).
    `fused`: AdamW's fused CUDA kernel, as `train` uses on CUDA.
    `counters`, when given, receives this process's minor page faults and system CPU seconds per
    timed step (getrusage): memory freed and faulted back in every step shows up there."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=fused or None)
    model.train()
    it = _repeat(batches)
    n, start = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start, n, usage = time.perf_counter(), 0, resource.getrusage(resource.RUSAGE_SELF)
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        with autocast(device, precision, cache=False):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(y)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if counters is not None:
        now = resource.getrusage(resource.RUSAGE_SELF)
        counters["minor_faults_per_step"] = (now.ru_minflt - usage.ru_minflt) / steps
        counters["system_seconds_per_step"] = (now.ru_stime - usage.ru_stime) / steps
    return n / seconds


def _time_eval(
    model: nn.Module, batches, max_batches: int, device: str, precision: str = "fp32", warmup: int = 1
) -> float:
    """Images/s of the one inference loop (infer.predict_logits) over max_batches batches after
    `warmup` untimed ones (worker start-up, cuDNN autotuning, lazy CUDA init), loading included."""
    it = _repeat(batches)
    predict_logits(model, itertools.islice(it, warmup), device, precision=precision)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = len(predict_logits(model, itertools.islice(it, max_batches), device, precision=precision))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def run_benchmark(
    cfg: Config, steps: int = 4, warmup: int = 1, workers: int = 2, out: str | Path | None = None
) -> dict:
    device = setup_torch(cfg)
    load = machine_load()
    if load["busy"]:
        print(busy_warning(load), file=sys.stderr)
    data = load_run_data(cfg)
    train_rows = data.manifest[data.manifest["split"] == "train"]
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device,
            "load": load,
        },
        "recipe": cfg.recipe,
        "model": cfg.model,
        "acquisition_aug": cfg.acquisition_aug,
        "batch_size": cfg.batch_size,
        "steps": steps,
    }

    torch.manual_seed(cfg.seed)
    plain_ds = ImageFileDataset(
        train_rows, data.data_root, reference_transforms(True, cfg.image_size, augment_params(cfg))
    )
    plain = torch.utils.data.DataLoader(
        plain_ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=False
    )
    results["plain_train_images_per_s"] = _time_training(
        create_model(cfg.model).to(device), plain, steps, warmup, device
    )
    eval_ds = ImageFileDataset(
        data.manifest[data.manifest["split"] == "test"], data.data_root, reference_transforms(False, cfg.image_size)
    )
    eval_plain = torch.utils.data.DataLoader(eval_ds, batch_size=cfg.batch_size, num_workers=workers)
    results["plain_eval_images_per_s"] = _time_eval(
        create_model(cfg.model).to(device), eval_plain, steps, device, warmup=warmup
    )

    model = training_model(cfg.model, device)
    batches = split_batches(cfg, data, "train", device, train=True)
    # compilation or CUDA-graph capture (if any) happens here and in the first steps; reported separately
    t0 = time.perf_counter()
    if cfg.compile:
        fast_model = torch.compile(model)
    elif cfg.cuda_graphs:
        fast_model = graph_training_step(
            model, (cfg.batch_size, 3, cfg.image_size, cfg.image_size), device, cfg.precision
        )
    else:
        fast_model = model
    batches.drop_last = isinstance(fast_model, GraphedTraining)  # one batch shape, as train does with graphs
    fused = device.startswith("cuda")
    _time_training(fast_model, batches, 1, 1, device, cfg.precision, fused=fused)
    results["brainlib_first_steps_s"] = time.perf_counter() - t0
    counters: dict = {}
    results["brainlib_train_images_per_s"] = _time_training(
        fast_model, batches, steps, warmup, device, cfg.precision, counters, fused
    )
    results |= {f"brainlib_train_{k}": v for k, v in counters.items()}
    results["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    results["ld_preload"] = os.environ.get("LD_PRELOAD", "")  # jemalloc or tcmalloc in place of glibc's malloc
    test = split_batches(cfg, data, "test", device)
    results["brainlib_eval_engine"] = engine_for(device)
    scored = as_scored(model, device, cfg.image_size)  # folded, and on the CPU run by ONNX Runtime, as evaluate does
    results["brainlib_eval_images_per_s"] = _time_eval(scored, test, steps, device, SCORING_PRECISION, warmup)
    if cfg.scoring_size != cfg.image_size:  # the side evaluate, predict and the shift suite score this recipe at
        at_side = cfg.replace(image_size=cfg.scoring_size)
        results["scoring_size"] = cfg.scoring_size
        results["brainlib_eval_at_scoring_size_images_per_s"] = _time_eval(
            as_scored(model, device, cfg.scoring_size),
            split_batches(at_side, data, "test", device),
            steps,
            device,
            SCORING_PRECISION,
            warmup,
        )
    results["brainlib_bf16_autocast"] = use_bf16(device, cfg.precision)
    results["brainlib_compile"] = cfg.compile
    results["brainlib_cuda_graphs"] = isinstance(fast_model, GraphedTraining)
    results["train_speedup"] = results["brainlib_train_images_per_s"] / results["plain_train_images_per_s"]
    results["eval_speedup"] = results["brainlib_eval_images_per_s"] / results["plain_eval_images_per_s"]

    print(f"{'pipeline':<10} {'train img/s':>12} {'eval img/s':>11}")
    for name in ("plain", "brainlib"):
        print(
            f"{name:<10} {results[f'{name}_train_images_per_s']:>12.1f} {results[f'{name}_eval_images_per_s']:>11.1f}"
        )
    print(f"speed-up: train x{results['train_speedup']:.2f}, eval x{results['eval_speedup']:.2f}")
    if "scoring_size" in results:  # the ratio above compares both pipelines at the training side
        print(
            f"brainlib scoring at the recipe's scoring side, {results['scoring_size']} px: "
            f"{results['brainlib_eval_at_scoring_size_images_per_s']:.1f} img/s"
        )
    print(
        f"brainlib training: {counters['minor_faults_per_step']:,.0f} minor page faults and "
        f"{counters['system_seconds_per_step']:.2f} s system time per step (GLIBC_TUNABLES={results['glibc_tunables'] or 'unset'}"
        f"{', LD_PRELOAD=' + results['ld_preload'] if results['ld_preload'] else ''})"
    )
    if out:
        write_text(out, json.dumps(results, indent=2, default=float) + "\n")
    return results

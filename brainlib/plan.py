"""How long `make pipeline` will take on this machine, measured before it starts.

Times a few real training steps (the recipe's model, batch size, augmentation and precision) and
scoring batches on synthetic images of the cache's size, then scales them by the work each notebook
does on the full dataset. An estimate from two or three steps: within a factor of about 1.5 of the
wall time (epoch 1 is slower on a GPU; another job on the cores makes everything slower).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .augment import augment_params
from .config import DEFAULT_RECIPE, SHORTER_RECIPE, Config, build_config
from .cpu_engine import as_scored
from .infer import autocast, cpu_has_native_bf16, predict_logits, resolve_device, use_bf16
from .loader import CachedBatches
from .machine_load import busy_warning, machine_load
from .models import create_model, training_model
from .shifts import SEVERITIES, SHIFTS

# the full dataset after 01's carve (seed 42; other seeds differ by a few images)
FULL = {"train": 5134, "val": 578, "test": 1311}
GRADCAM_IMAGES = 400  # 05's faithfulness sample
# above this estimate the shift suite scores the middle severity on a stratified sample (04's "auto")
FULL_SUITE_BUDGET_S = 20 * 60
SAMPLED_SUITE = {"severities": (2,), "sample": 400}
# above this estimate for the default recipe the plan also times SHORTER_RECIPE and offers it: on a 2-core
# CPU without AVX-512 the plan put the 224-px recipe's training at 78 min, and the default's takes ~2.4x that
LONG_PIPELINE_S = 2 * 3600


@dataclass
class Rates:
    train_images_per_s: float
    score_images_per_s: float


def machine_kind(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU ({torch.cuda.get_device_name(0)})"
    avx512 = "AVX-512" if "avx512" in torch.backends.cpu.get_cpu_capability().lower() else "no AVX-512"
    bf16 = "bf16 instructions" if cpu_has_native_bf16() else "no bf16 instructions"
    return f"CPU, {torch.get_num_threads()} threads, {avx512}, {bf16}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# Steps run before the clock starts. With one, the first measurement in a fresh process on a 2-core AMD EPYC
# (AVX-512, bf16) read 105-176 img/s scoring and 17.4-17.8 img/s training, against 150-167 and 21.0 for the same
# call repeated; with two, 156 and 18.7-20.5. Scoring matters most: 04's "auto" chooses the full shift suite
# or a sample from it, and a pipeline's plan had read 88 img/s where its 04 then scored 141 img/s.
WARMUP_STEPS = 2


def measure_rates(cfg: Config, device: str, steps: int = 2) -> Rates:
    """Images per second of training steps (augmentation included, through the training loader) and
    of fp32 scoring, after WARMUP_STEPS untimed steps each, on random images of the cache's size."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(
        0,
        256,
        ((steps + WARMUP_STEPS) * cfg.batch_size, cfg.cache_size, cfg.cache_size),
        generator=gen,
        dtype=torch.uint8,
    ).numpy()
    labels = np.zeros(len(images), int)
    batches = CachedBatches(
        images, labels, cfg.batch_size, cfg.image_size, train=True, aug=augment_params(cfg), device=device
    )
    model = training_model(cfg.model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()
    for step, (x, y) in enumerate(batches):
        if step == WARMUP_STEPS:
            _sync(device)
            t0 = time.perf_counter()
        with autocast(device, cfg.precision):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    train_rate = steps * cfg.batch_size / (time.perf_counter() - t0)
    return Rates(train_rate, measure_scoring(cfg, model, device, steps))


def measure_scoring(cfg: Config, model: nn.Module, device: str, batches: int = 2) -> float:
    """Images per second of fp32 scoring with `model` by the engine evaluate and predict use here
    (brainlib.cpu_engine), after WARMUP_STEPS untimed batches."""
    model = as_scored(model, device, cfg.scoring_size)
    images = torch.randint(
        0, 256, (cfg.batch_size * batches, cfg.cache_size, cfg.cache_size), dtype=torch.uint8
    ).numpy()
    labels = np.zeros(len(images), int)  # scoring ignores them
    warm = CachedBatches(
        np.concatenate([images[: cfg.batch_size]] * WARMUP_STEPS),
        np.zeros(WARMUP_STEPS * cfg.batch_size, int),
        cfg.batch_size,
        cfg.scoring_size,
        device=device,
    )
    predict_logits(model, warm, device)
    timed = CachedBatches(images, labels, cfg.batch_size, cfg.scoring_size, device=device)
    t0 = time.perf_counter()
    predict_logits(model, timed, device)
    return len(images) / (time.perf_counter() - t0)


def auto_shift_suite(cfg: Config, n_test: int) -> tuple[tuple[int, ...], int]:
    """(severities, sample) for 04's shift_severities="auto": the full suite where it takes at most
    FULL_SUITE_BUDGET_S here, else the middle severity on a stratified sample (with intervals)."""
    device = resolve_device(cfg.device)
    model = create_model(cfg.model).to(device).to(memory_format=torch.channels_last)
    full = suite_passes() * n_test / measure_scoring(cfg, model, device)
    return (SEVERITIES, 0) if full <= FULL_SUITE_BUDGET_S else (SAMPLED_SUITE["severities"], SAMPLED_SUITE["sample"])


def suite_passes(severities=SEVERITIES) -> int:
    """Passes over the test images: clean plus every shift at every severity."""
    return 1 + len(SHIFTS) * len(severities)


def estimate(cfg: Config, rates: Rates, counts: dict = FULL) -> dict:
    """Seconds per notebook, and the shift suite 04 runs by default ('auto')."""
    score = rates.score_images_per_s
    epoch = counts["train"] / rates.train_images_per_s + counts["val"] / score
    full_suite = suite_passes() * counts["test"] / score
    suite = {"severities": SEVERITIES, "sample": 0} if full_suite <= FULL_SUITE_BUDGET_S else SAMPLED_SUITE
    n_suite = suite["sample"] or counts["test"]
    evaluate = (3 * counts["test"] + counts["val"] + suite_passes(suite["severities"]) * n_suite) / score
    gradcam = 8 * min(GRADCAM_IMAGES, counts["test"]) / score  # two CAM methods, each ~3 forward passes + 1 blurred
    return {
        "01_data": 45.0,  # decoding and hashing 7,023 files: 15-45 s whatever the model
        "02_model": 15.0,
        "03_train": cfg.epochs * epoch,
        "04_evaluate": evaluate,
        "05_gradcam": gradcam,
        "shift_suite": suite,
        "full_shift_suite_s": full_suite,
    }


def notebooks_total(times: dict) -> float:
    """Seconds of the five notebooks in an estimate (its other entries describe the shift suite)."""
    return sum(v for k, v in times.items() if k[:2].isdigit())


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def print_plan(cfg: Config) -> dict:
    device = resolve_device(cfg.device)
    if cfg.fast:
        print(f"pipeline plan: a fast run of recipe {cfg.recipe} on the fixture-sized sample: a few minutes")
        return {}
    load = machine_load()
    if load["busy"]:
        # another job installing packages once made this estimate 100 min for a 61.5-min run
        print(busy_warning(load))
    rates = measure_rates(cfg, device)
    times = estimate(cfg, rates)
    total = notebooks_total(times)
    suite = times["shift_suite"]
    print(
        f"pipeline plan: recipe {cfg.recipe} ({cfg.model}, {cfg.image_size} px{f', scored at {cfg.scoring_size}' if cfg.scoring_size != cfg.image_size else ''}, {cfg.epochs} epochs) on {machine_kind(device)}"
    )
    print(
        f"  measured here: training {rates.train_images_per_s:.0f} img/s "
        f"({'bf16 autocast' if use_bf16(device, cfg.precision) else 'fp32'}), scoring {rates.score_images_per_s:.0f} img/s"
    )
    for name in ("01_data", "02_model", "03_train", "04_evaluate", "05_gradcam"):
        print(f"  {name:<12} ~{_minutes(times[name])}")
    shifts = (
        "all severities, all test images" if not suite["sample"] else f"middle severity, {suite['sample']} test images"
    )
    print(f"  total        ~{_minutes(total)} (estimate; 04 scores the shift suite at {shifts})")
    if suite["sample"]:
        print(
            f"  the full shift suite instead: ~{_minutes(times['full_shift_suite_s'])} more (make pipeline SHIFTS=1,2,3)"
        )
    if cfg.recipe == DEFAULT_RECIPE and total > LONG_PIPELINE_S:
        print(shorter_recipe_line(cfg, device))
    return times


def shorter_recipe_line(cfg: Config, device: str) -> str:
    """SHORTER_RECIPE timed the same way on this machine, as one line a user can act on before the wait."""
    shorter = build_config({}, {"recipe": SHORTER_RECIPE, "device": cfg.device, "precision": cfg.precision})
    times = estimate(shorter, measure_rates(shorter, device))
    total = notebooks_total(times)
    return (
        f"  shorter: make pipeline RECIPE={SHORTER_RECIPE} ({shorter.image_size} px, {shorter.epochs} epochs) "
        f"~{_minutes(total)} here, and less accurate (docs/trust.md, seeds)"
    )

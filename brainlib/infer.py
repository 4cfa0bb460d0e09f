"""Device and precision policy, and the one batched inference loop.

Scoring (validation during training, evaluate, predict, Grad-CAM, bench's eval) runs in fp32
unless a caller asks for bf16: bf16 autocast flipped 2 of 1,311 test predictions of the
committed EfficientNet-Lite0 on a 2-core AMD EPYC (evaluate said 98.78 %, predict 98.93 %), so one
checkpoint must not give two answers. Training uses bf16 autocast where the hardware has bf16
instructions (cfg.precision="auto"), 1.6x faster than fp32 there.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .config import CLASS_NAMES, Config
from .errors import SettingsError

SCORING_PRECISION = "fp32"


def resolve_device(name: str = "auto") -> str:
    """'auto' means cuda when available, else cpu."""
    if name in ("auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"device={name!r} was asked for but CUDA is not available")
    return name


def setup_torch(cfg: Config) -> str:
    """Thread count from the config; returns the device to use. cuDNN autotuning stays off: on an
    H200 it cost 20-35 s for each new batch shape of EfficientNet-Lite0 (first training step 21 s,
    graph capture 35 s) and gained nothing at steady state (1,700-2,100 img/s eager, as without)."""
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    return resolve_device(cfg.device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX). oneDNN reports bf16 support on any
    AVX-512 CPU and emulates it where these are missing: emulated, EfficientNet-Lite0 trained at 9 img/s
    against 16 img/s in fp32 on a 2-core Intel Xeon with AVX-512 but no AVX512-BF16."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust oneDNN
        return True
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def use_bf16(device: str, precision: str = "auto") -> bool:
    """bf16 autocast: on CUDA, and on CPUs with bf16 instructions (1.6x faster than fp32 for the
    reference CNN on an AVX-512 CPU with AVX512-BF16, see docs/benchmarks.md). Weights stay fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise SettingsError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        return device.startswith("cuda") or cpu_has_native_bf16()
    return precision == "bf16"


def autocast(device: str, precision: str = "auto", cache: bool = True):
    """bf16 autocast where use_bf16 says so. cache=False for a forward that CUDA graphs capture
    (they cannot hold autocast's weight cache; each weight is cast once per forward anyway)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=use_bf16(device, precision), cache_enabled=cache)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small CPU tensor on `device` without stalling the host: a plain `.to("cuda")` from
    pageable memory waits until the GPU has finished all queued work, so the next batch could not
    be prepared while this one trains. Pinned memory lets the copy run in stream order instead."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: str, precision: str = SCORING_PRECISION) -> torch.Tensor:
    """Logits in order, as fp32 on the CPU (flip test-time augmentation: a models.Ensemble with flip)."""
    model.eval()
    out, full = [], 0
    for x, _ in batches:
        x, n = x.to(device), len(x)
        full = full or n
        if n < full and device.startswith("cuda"):  # the last batch padded: a new shape costs GPU set-up time
            x = torch.cat([x, x.new_zeros((full - n, *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x).float()
        out.append(logits[:n].cpu())
    return torch.cat(out) if out else torch.zeros(0, len(CLASS_NAMES))


def predict_logits_and_features(
    model: nn.Module, batches, device: str, layers: list[nn.Module]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and, per image, the spatial mean of each of `layers`' outputs (the registry's CAM layer:
    the last convolutional block; one per member of an ensemble, side by side), both fp32 on the CPU,
    from the same forward passes as predict_logits. A layer that runs more than once per batch (an
    ensemble's mirror view) gives the mean of its runs."""
    pooled: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, into=into: into.append(out.float().mean((2, 3)).cpu()))
        for layer, into in zip(layers, pooled)
    ]
    n_batches = 0

    def counted():
        nonlocal n_batches
        for batch in batches:
            n_batches += 1
            yield batch

    try:
        logits = predict_logits(model, counted(), device)
    finally:
        for hook in hooks:
            hook.remove()
    if not n_batches:
        return logits, torch.zeros(0, 0)
    per_layer = []
    for runs in pooled:
        views = len(runs) // n_batches
        per_layer.append(torch.cat([torch.stack(runs[i : i + views]).mean(0) for i in range(0, len(runs), views)]))
    return logits, torch.cat(per_layer, 1)[: len(logits)]  # CUDA pads the last batch at its end

"""Device and precision policy, and the one batched inference loop.

Scoring (validation during training, evaluate, predict, Grad-CAM, bench's eval) runs in fp32
unless a caller asks for bf16: bf16 autocast flipped 2 of 1,311 test predictions of the
committed EfficientNet-Lite0 on this CPU (evaluate said 98.78 %, predict 98.93 %), so one
checkpoint must not give two answers. Training uses bf16 autocast where the hardware has bf16
kernels (cfg.precision="auto"), 1.6x faster than fp32 here.
"""

from __future__ import annotations

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


def use_bf16(device: str, precision: str = "auto") -> bool:
    """bf16 autocast: on CUDA, and on CPUs with oneDNN bf16 kernels (1.6x faster than fp32 for
    the reference CNN on this AVX-512 machine, see BENCHMARKS.md). Weights stay fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise SettingsError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        return device.startswith("cuda") or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return precision == "bf16"


def autocast(device: str, precision: str = "auto", cache: bool = True):
    """bf16 autocast where use_bf16 says so. cache=False for a forward that CUDA graphs capture
    (they cannot hold autocast's weight cache; each weight is cast once per forward anyway)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=use_bf16(device, precision), cache_enabled=cache)


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: str, tta: bool = False, precision: str = SCORING_PRECISION) -> torch.Tensor:
    """Logits in order, as fp32 on the CPU; with tta, the mean of the image's and its mirror
    image's log-probabilities."""
    model.eval()
    out, full = [], 0
    for x, _ in batches:
        x, n = x.to(device), len(x)
        full = full or n
        if n < full and device.startswith("cuda"):  # the last batch padded: a new shape costs GPU set-up time
            x = torch.cat([x, x.new_zeros((full - n, *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(x).float()
            if tta:
                logits = (logits.log_softmax(1) + model(torch.flip(x, dims=[-1])).float().log_softmax(1)) / 2
        out.append(logits[:n].cpu())
    return torch.cat(out) if out else torch.zeros(0, len(CLASS_NAMES))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): one scalar T minimising validation NLL of logits / T."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp())


def calibrate(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Class probabilities softmax(logits / T); T=None leaves the logits as they are."""
    return (logits.float() / (temperature or 1.0)).softmax(1)


def conformal_state(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Split-conformal thresholds (LAC score) at each of stats.CONFORMAL_ALPHAS, from calibrated
    validation probabilities: plain floats, stored in a checkpoint next to its temperature."""
    from .stats import CONFORMAL_ALPHAS, conformal_threshold

    p, y = probs.numpy(), labels.numpy()
    return {"score": "lac", "n_calibration": len(y), "thresholds": {str(a): conformal_threshold(p, y, a) for a in CONFORMAL_ALPHAS}}


def calibration_state(val_logits: torch.Tensor, val_labels: torch.Tensor) -> dict:
    """What a checkpoint keeps from the validation logits that selected it: the temperature and,
    on the probabilities it calibrates, the conformal thresholds."""
    temperature = fit_temperature(val_logits, val_labels)
    return {"temperature": temperature, "conformal": conformal_state(calibrate(val_logits, temperature), val_labels)}

"""Calibration: what turns a model's logits into probabilities and prediction sets one can act on.

- Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation logits that
  selected the checkpoint; it changes confidences, never predictions.
- Split conformal prediction sets with the LAC score 1 - p(true class) (Sadinle et al. 2019;
  Angelopoulos & Bates 2021), calibrated on the same validation split. Written out here because
  the method is three lines and its thresholds must live in a checkpoint as plain floats, which
  checkpoint.py loads without unpickling objects; a library's fitted object could not go there.
- Reliability: equal-width confidence bins and the expected calibration error.

Nothing here is ever fitted on the test split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import ood
from .checkpoint import InferenceModel, load_for_inference, write_calibrated_copy
from .config import CLASS_NAMES, Config
from .data import split_digest
from .errors import CheckpointError
from .infer import predict_logits, predict_logits_and_features, setup_torch
from .loader import RunData, split_batches
from .stats import ECE_BINS, ece, exact_interval

CONFORMAL_ALPHAS = (0.01, 0.05)  # sets meant to hold the true class 99 % and 95 % of the time
DEFAULT_ALPHA = 0.01  # the set predict prints and evaluate writes per image


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
    """Split-conformal thresholds (LAC score) at each of CONFORMAL_ALPHAS, from calibrated
    validation probabilities: plain floats, stored in a checkpoint next to its temperature."""
    p, y = probs.numpy(), labels.numpy()
    return {
        "score": "lac",
        "n_calibration": len(y),
        "thresholds": {str(a): conformal_threshold(p, y, a) for a in CONFORMAL_ALPHAS},
    }


def calibration_state(val_logits: torch.Tensor, val_labels: torch.Tensor) -> dict:
    """What a checkpoint keeps from the validation logits that selected it: the temperature and,
    on the probabilities it calibrates, the conformal thresholds."""
    temperature = fit_temperature(val_logits, val_labels)
    return {"temperature": temperature, "conformal": conformal_state(calibrate(val_logits, temperature), val_labels)}


def conformal_threshold(calibration_probs: np.ndarray, calibration_labels: np.ndarray, alpha: float) -> float:
    """The split-conformal threshold on the LAC score s = 1 - p(true class): the
    ceil((n + 1)(1 - alpha))-th smallest calibration score. Sets {k : 1 - p_k <= threshold} then
    hold the true class with probability >= 1 - alpha for exchangeable test images. With too few
    calibration images for that rank the threshold is 1 (every class: the honest answer)."""
    probs = np.asarray(calibration_probs, float)
    labels = np.asarray(calibration_labels, int)
    scores = np.sort(1.0 - probs[np.arange(len(labels)), labels])
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    return 1.0 if rank > len(scores) else float(scores[rank - 1])


def class_conditional_thresholds(
    calibration_probs: np.ndarray, calibration_labels: np.ndarray, alpha: float
) -> np.ndarray:
    """One split-conformal threshold per class (Mondrian), each from that class's calibration images alone;
    `prediction_sets` takes the array in place of the one threshold. A class with too few images gets 1."""
    probs = np.asarray(calibration_probs, float)
    labels = np.asarray(calibration_labels, int)
    return np.array(
        [conformal_threshold(probs[labels == k], labels[labels == k], alpha) for k in range(probs.shape[1])]
    )


def prediction_sets(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (n, C): class k is in image i's set when 1 - p_ik <= threshold. Never empty: the
    most probable class is always kept (it changes coverage only upwards)."""
    probs = np.asarray(probs, float)
    sets = (1.0 - probs) <= threshold + 1e-12
    sets[np.arange(len(probs)), probs.argmax(1)] = True
    return sets


def set_classes(sets: np.ndarray) -> list[list[str]]:
    """The class names in each row of `prediction_sets`, in CLASS_NAMES order."""
    return [[name for name, inside in zip(CLASS_NAMES, row, strict=True) if inside] for row in sets]


def set_coverage(sets: np.ndarray, labels: np.ndarray) -> dict:
    """Empirical coverage (true class in the set), mean set size and the share of sets with more
    than one class (the images `predict` flags for review)."""
    labels = np.asarray(labels, int)
    if not len(labels):
        return {"n": 0, "coverage": None, "mean_set_size": None, "share_uncertain": None}
    size = sets.sum(1)
    return {
        "n": int(len(labels)),
        "coverage": float(sets[np.arange(len(labels)), labels].mean()),
        "mean_set_size": float(size.mean()),
        "share_uncertain": float((size > 1).mean()),
    }


def coverage_by_class(sets: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Per class (CLASS_NAMES order): images, how many sets hold the true class, the share and its exact
    95 % interval (None where the class has no image). A marginal coverage can hide an under-covered class."""
    labels = np.asarray(labels, int)
    covered = sets[np.arange(len(labels)), labels]
    rows = []
    for k, name in enumerate(CLASS_NAMES):
        n, hit = int((labels == k).sum()), int(covered[labels == k].sum())
        rows.append(
            {"class": name, "n": n, "covered": hit}
            | ({"coverage": hit / n, "interval": exact_interval(hit, n)} if n else {"coverage": None, "interval": None})
        )
    return rows


def coverage_text(sets: np.ndarray, labels: np.ndarray) -> str:
    """One line for a report: coverage over every class and per class, each with its exact 95 % interval
    and its count, then the mean set size and the share of sets with more than one class."""
    per_class, whole = coverage_by_class(sets, labels), set_coverage(sets, labels)
    n, hit = whole["n"], sum(c["covered"] for c in per_class)
    every = {"class": "every class", "n": n} | ({"coverage": hit / n, "interval": exact_interval(hit, n)} if n else {})
    cells = [
        f"{c['class']} {c['coverage']:.4f} [{c['interval'][0]:.3f}, {c['interval'][1]:.3f}] (n={c['n']})"
        if c["n"]
        else f"{c['class']} - (n=0)"
        for c in [every, *per_class]
    ]
    spread = f"mean size {whole['mean_set_size']:.3f}, {whole['share_uncertain']:.1%} uncertain" if n else "no sets"
    return "; ".join(cells) + f"; {spread}"


def require_selection_split(net: InferenceModel, cfg: Config, data: RunData, name: str = "the checkpoint") -> None:
    """Refuse to fit on a validation split other than the one that selected the checkpoint (where it
    records it, `val_digest`): on another carve, some "validation" images would be images it trained
    on, and a temperature or threshold fitted there would be overconfident."""
    selected_on = net.state.get("val_digest")
    if selected_on and selected_on != split_digest(data.manifest):
        raise CheckpointError(
            f"{name} was selected on another validation split than {cfg.run_dir}'s: fit its calibration in "
            f"a run prepared from the same copy of the data with split seed {cfg.validation_seed}"
        )


def calibration_of(net: InferenceModel, cfg: Config, data: RunData, device: str) -> dict:
    """The checkpoint's temperature and conformal thresholds; what it lacks is fitted here on the
    run's val split (the one its epoch was selected on) and never written back."""
    if net.temperature is not None and net.conformal is not None:
        return {"temperature": net.temperature, "conformal": net.conformal, "source": "checkpoint"}
    require_selection_split(net, cfg, data)
    val = split_batches(cfg, data, "val", device)
    logits, labels = predict_logits(net.model, val, device), val.labels.cpu()
    if net.temperature is None:
        return calibration_state(logits, labels) | {"source": "validation split (fitted by evaluate)"}
    conformal = conformal_state(calibrate(logits, net.temperature), labels)
    return {
        "temperature": net.temperature,
        "conformal": conformal,
        "source": "temperature: checkpoint; conformal: validation split",
    }


def ood_statistics(
    net: InferenceModel, cfg: Config, data: RunData, device: str, stats: dict | None = None
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(statistics of the checkpoint's Training features: `stats` when given (a stored detector),
    else fitted on the train split, not augmented; the validation features; the validation logits),
    for brainlib.ood's scores and thresholds."""
    cfg = net.scoring_config(cfg)
    if stats is None:
        train = split_batches(cfg, data, "train", device)
        _, features = predict_logits_and_features(net.model, train, device, net.feature_layers)
        stats = ood.fit(features, train.labels.cpu(), len(CLASS_NAMES))
    val_logits, val_features = predict_logits_and_features(
        net.model, split_batches(cfg, data, "val", device), device, net.feature_layers
    )
    return stats, val_features, val_logits


def fit_ood(net: InferenceModel, cfg: Config, data: RunData, device: str, kind: str = ood.DEFAULT_SCORE) -> dict:
    """The out-of-distribution detector of a checkpoint: statistics of its Training features,
    threshold at the validation images' 99th percentile (brainlib.ood)."""
    stats, val_features, val_logits = ood_statistics(net, cfg, data, device)
    return ood.with_threshold(stats, kind, ood.score(stats, val_features, val_logits, kind))


def calibrate_checkpoint(cfg: Config, data: RunData, checkpoint: str | Path, out: str | Path) -> dict:
    """A copy of `checkpoint` at `out` with what it lacks of temperature, conformal thresholds and
    OOD detector fitted on the run's splits (for checkpoints trained before best.pt stored them);
    returns what it stored (the OOD statistics summarised). The val split must be the one the
    checkpoint was selected on: checkpoint.trained_config takes the seed and val fraction from it."""
    device = setup_torch(cfg)
    net = load_for_inference(checkpoint, device)
    require_selection_split(net, cfg, data, str(checkpoint))
    fitted = {}
    if net.temperature is None or net.conformal is None:  # what it has is kept
        fitted = {k: v for k, v in calibration_of(net, net.scoring_config(cfg), data, device).items() if k != "source"}
    if net.ood is None:
        fitted["ood"] = fit_ood(net, cfg, data, device)
    write_calibrated_copy(checkpoint, fitted | {"calibrated_size": net.image_size}, out)
    summary = {k: v for k, v in fitted.items() if k != "ood"}
    if "ood" in fitted:
        summary["ood"] = {k: v for k, v in fitted["ood"].items() if not isinstance(v, torch.Tensor)}
    return summary | {"out": str(out)}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Equal-width confidence bins: mean confidence, accuracy and count per bin."""
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = which == b
        rows.append(
            {
                "lower": edges[b],
                "upper": edges[b + 1],
                "count": int(sel.sum()),
                "confidence": float(confidence[sel].mean()) if sel.any() else np.nan,
                "accuracy": float(correct[sel].mean()) if sel.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    return float(ece(confidence, correct, n_bins)) if len(confidence) else 0.0


def calibrated_probabilities(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(logits / T) as a numpy array, from saved logits (test_logits.npy)."""
    return calibrate(torch.from_numpy(np.asarray(logits, np.float32)), temperature).numpy()

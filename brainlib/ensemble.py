"""Ensembles (seeds or backbones) and flip test-time augmentation, made into one checkpoint that
every scoring path takes (the kind itself: checkpoint.ensemble_state and models.Ensemble).

An ensemble is chosen the way a training run's epoch is, on the validation carve its members were
selected on: this reports the ensemble's and each member's validation accuracy and log-loss (after
each one's temperature) side by side, and stores the ensemble's accuracy as its best_val_acc.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from .calibration import calibrate, calibrate_checkpoint
from .checkpoint import ensemble_state, load_checkpoint, load_for_inference, save_checkpoint
from .config import Config
from .infer import predict_logits, setup_torch
from .loader import RunData, split_batches


def validation_scores(net, cfg: Config, data: RunData, device: str) -> dict:
    """Accuracy and log-loss (after the checkpoint's temperature) on the run's validation split."""
    val = split_batches(net.scoring_config(cfg), data, "val", device)
    logits, labels = predict_logits(net.model, val, device), val.labels.cpu()
    probs = calibrate(logits, net.temperature)
    return {
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
        "n": len(labels),
    }


def build_ensemble(cfg: Config, data: RunData, members: list[str | Path], flip: bool, out: str | Path) -> dict:
    """Write the ensemble of `members` (with flip: each also scoring the mirror image) to `out`, with
    temperature, conformal thresholds and OOD detector fitted for its output on the run's validation
    split (which must be the members'), and return its and its members' validation scores."""
    out = Path(out)
    uncalibrated = save_checkpoint(ensemble_state(members, flip), out.with_name(out.name + ".uncalibrated"))
    try:
        fitted = calibrate_checkpoint(cfg, data, uncalibrated, out)
    finally:
        uncalibrated.unlink(missing_ok=True)
    device = setup_torch(cfg)
    scores = {str(m): validation_scores(load_for_inference(m, device), cfg, data, device) for m in members}
    mine = validation_scores(load_for_inference(out, device), cfg, data, device)
    save_checkpoint(load_checkpoint(out) | {"best_val_acc": mine["accuracy"], "validation": mine}, out)
    return fitted | {"validation": {"ensemble": mine, "members": scores}}

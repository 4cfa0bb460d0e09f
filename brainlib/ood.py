"""Out-of-distribution detection: is an input a brain MRI slice like those the model learned from?

The classifier answers every image with one of four classes, also a photograph, a page of text or a CT
slice. This module scores how far an image's features lie from the training images', so that `predict`
can decline to answer.

Features: the spatial mean of the registry's CAM layer (the last convolutional block: 1,280 values for
EfficientNet-Lite0, 64 for the small CNN). Scores, all "higher = less like Training":

- `mahalanobis`: the smallest class-conditional Mahalanobis distance with one shared covariance (Lee et al.
  2018), in the top principal components of the Training features (so the statistics stay small
  enough to live in the checkpoint);
- `relative_mahalanobis`: the same minus the distance under one class-agnostic Gaussian (Ren et al. 2021),
  which discounts directions in which all training images vary;
- `energy`: minus the log-sum-exp of the logits (Liu et al. 2020), from the logits alone.

The statistics are fitted on Training images only; the threshold is the (1 - FALSE_ALARM_RATE) quantile of
the validation images' scores, so about 1 % of in-distribution images are flagged. Everything is stored as
tensors and plain values and loads with `weights_only=True`. Which score is used was decided by measurement
on families of non-MRI images kept apart from the families it is reported on (docs/trust.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .infer import predict_logits, predict_logits_and_features

SCORES = ("mahalanobis", "relative_mahalanobis", "energy")
DEFAULT_SCORE = "mahalanobis"
FALSE_ALARM_RATE = 0.01
COMPONENTS = 128  # principal components kept: 0.6 MB of statistics for 1,280-dimensional features
SHRINKAGE = 1e-3  # added to the covariance's diagonal (relative to its mean variance): keeps it invertible


def _gaussian(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision (inverse covariance, shrunk) of the rows of z."""
    mean = z.mean(0)
    centred = z - mean
    cov = centred.T @ centred / max(len(z) - 1, 1)
    cov += SHRINKAGE * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
    return mean, torch.linalg.inv(cov)


def fit(features: torch.Tensor, labels: torch.Tensor, n_classes: int, components: int = COMPONENTS) -> dict:
    """Gaussian statistics of Training features: projection to the top principal components, the
    class means and the shared (within-class) precision there, and a class-agnostic Gaussian."""
    x = features.double()
    centre = x.mean(0)
    _, _, vt = torch.linalg.svd(x - centre, full_matrices=False)
    projection = vt[: min(components, vt.shape[0])].T  # (d, k)
    z = (x - centre) @ projection
    class_means = torch.stack([z[labels == c].mean(0) for c in range(n_classes)])
    within = z - class_means[labels]
    _, precision = _gaussian(within)
    background_mean, background_precision = _gaussian(z)
    return {
        "centre": centre.float(),
        "projection": projection.float(),
        "class_means": class_means.float(),
        "precision": precision.float(),
        "background_mean": background_mean.float(),
        "background_precision": background_precision.float(),
        "n_fit": int(len(x)),
    }


def _distance(z: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    d = z - mean
    return ((d @ precision) * d).sum(-1)


def score(stats: dict, features: torch.Tensor, logits: torch.Tensor, kind: str | None = None) -> np.ndarray:
    """Per image, how unlike Training it is (higher: less like it), by `kind` (default: the stats')."""
    kind = kind or stats.get("score", DEFAULT_SCORE)
    if kind == "energy":
        return (-torch.logsumexp(logits.float(), 1)).numpy()
    z = (features.float() - stats["centre"]) @ stats["projection"]
    per_class = torch.stack([_distance(z, m, stats["precision"]) for m in stats["class_means"]], 1)
    nearest = per_class.min(1).values
    if kind == "mahalanobis":
        return nearest.numpy()
    if kind == "relative_mahalanobis":
        return (nearest - _distance(z, stats["background_mean"], stats["background_precision"])).numpy()
    raise ValueError(f"unknown OOD score {kind!r}; known: {', '.join(SCORES)}")


def threshold_for(val_scores: np.ndarray, false_alarm_rate: float = FALSE_ALARM_RATE) -> float:
    """The score above which an image is called out of distribution: the (1 - rate) quantile of the
    validation scores (the higher of the two neighbouring values, so at most `rate` of them are above)."""
    return float(np.quantile(np.asarray(val_scores, float), 1 - false_alarm_rate, method="higher"))


def with_threshold(stats: dict, kind: str, val_scores: np.ndarray, false_alarm_rate: float = FALSE_ALARM_RATE) -> dict:
    return stats | {
        "score": kind,
        "threshold": threshold_for(val_scores, false_alarm_rate),
        "false_alarm_rate": false_alarm_rate,
        "n_threshold": int(len(val_scores)),
    }


def flagged(stats: dict, scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores) > stats["threshold"]


def detection_auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling out-of-distribution images (positives) from in-distribution ones by score."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def logits_and_scores(net, batches, device: str) -> tuple[torch.Tensor, np.ndarray | None]:
    """A checkpoint's logits over `batches` and, when it has a detector (`net.ood`, an
    InferenceModel's), each image's OOD score from the same forward passes; None without one."""
    if not net.ood:
        return predict_logits(net.model, batches, device), None
    logits, features = predict_logits_and_features(net.model, batches, device, net.feature_layers)
    return logits, score(net.ood, features, logits)

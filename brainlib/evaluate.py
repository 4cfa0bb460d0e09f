"""Final report on the official Testing split: predictions once, then every metric from them,
written to the run folder (predictions.csv, test_logits.npy, metrics.json).

Scores a checkpoint through the one inference path (checkpoint.load_for_inference,
infer.predict_logits) and never writes to the checkpoint: a temperature or conformal thresholds
missing from an old checkpoint are fitted on the validation split (brainlib.calibration) and kept
in metrics.json. The shift suite comes from brainlib.robustness. Every headline number carries a
bootstrap interval (brainlib.stats).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from . import ood
from .atomic import atomic_path, save_npy, write_text
from .calibration import (
    DEFAULT_ALPHA,
    calibrated_probabilities,
    calibration_of,
    expected_calibration_error,
    prediction_sets,
    set_classes,
    set_coverage,
)
from .checkpoint import best_checkpoint, load_for_inference, weights_bytes
from .config import CLASS_NAMES, Config
from .data import leakage_free
from .infer import predict_logits, setup_torch
from .loader import RunData, split_batches
from .models import Ensemble
from .robustness import shift_summary, shift_table, summary_of
from .shifts import SEVERITIES
from .shortcuts import file_says_no_tumour, file_tumour_type, shortcut_report
from .stats import metric_intervals


def predict_test(
    cfg: Config,
    data: RunData,
    checkpoint: str | Path | None = None,
    shifts: bool = True,
    shift_severities=SEVERITIES,
    shift_sample: int = 0,
) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Predict every test image once; write predictions.csv and test_logits.npy to the run folder.

    Returns the predictions, the logits and the extras measured on the same checkpoint:
    temperature and conformal thresholds (the checkpoint's, else fitted on val), accuracy with flip
    TTA, and the shift suite's table (brainlib.robustness) at `shift_severities`, on a stratified
    sample of `shift_sample` test images (0: all)."""
    device = setup_torch(cfg)
    checkpoint = Path(checkpoint or best_checkpoint(cfg.run_dir))
    net = load_for_inference(checkpoint, device)
    cfg = net.scoring_config(cfg)
    # first: it refuses a run whose validation split did not select the checkpoint, before any scoring
    calibration = calibration_of(net, cfg, data, device)
    test_batches = split_batches(cfg, data, "test", device)
    started = time.perf_counter()
    logits, ood_scores = ood.logits_and_scores(net, test_batches, device)
    scoring_seconds = time.perf_counter() - started
    test = data.manifest[data.manifest["split"] == "test"].reset_index(drop=True)
    probs = logits.softmax(1).numpy()
    pred = test[["path", "label", "label_idx", "has_train_twin_exact", "has_train_twin_near"]].copy()
    pred["pred_idx"] = probs.argmax(1)
    pred["pred"] = [CLASS_NAMES[i] for i in pred["pred_idx"]]
    pred["confidence"] = probs.max(1)
    for i, name in enumerate(CLASS_NAMES):
        pred[f"p_{name}"] = probs[:, i]
    # predict answers with the temperature and its 99 % set (DEFAULT_ALPHA); the same columns here let a reader put the
    # two side by side (the default's temperature, 0.586, turns a raw 0.95 into 0.997)
    calibrated = calibrated_probabilities(logits.numpy(), calibration["temperature"])
    for i, name in enumerate(CLASS_NAMES):
        pred[f"p_calibrated_{name}"] = calibrated[:, i]
    threshold = calibration["conformal"]["thresholds"].get(str(DEFAULT_ALPHA))
    if threshold is not None:
        pred["prediction_set"] = ["|".join(names) for names in set_classes(prediction_sets(calibrated, threshold))]
    file_rule = file_says_no_tumour(data.manifest, pred["path"])
    if file_rule is not None:  # does the file's format alone say "no tumour", or which tumour? (brainlib.shortcuts)
        pred["file_says_notumor"] = file_rule
        pred["file_tumour_type"] = file_tumour_type(data.manifest, pred["path"])
    if ood_scores is not None:
        pred["ood_score"] = ood_scores
        pred["out_of_distribution"] = ood.flagged(net.ood, ood_scores)
    run_dir = Path(cfg.run_dir)
    with atomic_path(run_dir / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    save_npy(logits.numpy(), run_dir / "test_logits.npy")
    y = torch.tensor(pred["label_idx"].to_numpy())
    extras = {
        "model": net.model_name,
        "checkpoint": str(checkpoint),
        "epoch": net.state.get("epoch"),
        "temperature": calibration["temperature"],
        "conformal": calibration["conformal"] | {"source": calibration["source"]},
        "accuracy_tta_flip": float(
            (predict_logits(Ensemble([net.model], [net.image_size], flip=True), test_batches, device).argmax(1) == y)
            .float()
            .mean()
        ),
        "seed": cfg.seed,
        "ood": ood_summary(net.ood, ood_scores),
        # the cost beside the gain, for comparing recipes: the clean test pass through the one inference path
        # (cached images to logits and OOD features) on this machine, and the weights that ship
        "scoring": {
            "images_per_s": len(pred) / scoring_seconds,
            "device": device,
            "engine": net.engine,
            "threads": torch.get_num_threads(),
            "weights_mb": weights_bytes(net.state) / 2**20,
        },
    }
    if shifts:
        table = shift_table(cfg, data, net, device, shift_severities, shift_sample, calibration)
        extras["shifts"] = {
            "summary": shift_summary(table).as_dict(),
            "sample": shift_sample,
            "table": table.to_dict("records"),
        }
    return pred, logits.numpy(), extras


def ood_summary(stats: dict | None, test_scores: np.ndarray | None) -> dict | None:
    """The detector's settings and its false alarms on the official test split (all of them are
    brain MRIs, so every flag is a false alarm)."""
    if stats is None:
        return None
    return {
        "score": stats["score"],
        "threshold": stats["threshold"],
        "validation_false_alarm_rate": stats["false_alarm_rate"],
        "test_false_alarm_rate": float(ood.flagged(stats, test_scores).mean()),
        "n_fit": stats["n_fit"],
        "n_threshold": stats["n_threshold"],
    }


def probabilities(pred: pd.DataFrame) -> np.ndarray:
    return pred[[f"p_{name}" for name in CLASS_NAMES]].to_numpy()


def compute_metrics(pred: pd.DataFrame, logits: np.ndarray, extras: dict | None = None) -> dict:
    """Every headline number from the saved predictions and logits (stable keys: see metrics.json)."""
    extras = extras or {}
    y, y_hat, probs = pred["label_idx"].to_numpy(), pred["pred_idx"].to_numpy(), probabilities(pred)
    correct = y == y_hat
    labels = list(range(len(CLASS_NAMES)))
    report = classification_report(
        y, y_hat, labels=labels, target_names=list(CLASS_NAMES), output_dict=True, zero_division=0
    )
    clean = leakage_free(pred)
    exact_clean = ~pred["has_train_twin_exact"].astype(bool).to_numpy()
    roc = {}
    for i, name in enumerate(CLASS_NAMES):
        positives = y == i
        roc[name] = float(roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y) else None
    temperature = extras.get("temperature")
    calibrated_probs = calibrated_probabilities(logits, temperature) if temperature else None
    conformal = extras.get("conformal")
    sets = {}
    if conformal and temperature:
        for alpha, threshold in conformal["thresholds"].items():
            chosen = prediction_sets(calibrated_probs, threshold)
            sets[alpha] = {
                "threshold": threshold,
                "test": set_coverage(chosen, y),
                "leakage_free": set_coverage(chosen[clean], y[clean]),
                # marginal coverage can hide an under-covered class
                "per_class": {
                    name: set_coverage(chosen[y == i], y[y == i])["coverage"] for i, name in enumerate(CLASS_NAMES)
                },
            }
    return {
        "model": extras.get("model"),
        "checkpoint": extras.get("checkpoint"),
        "epoch": extras.get("epoch"),
        "n_test": int(len(y)),
        "accuracy": float(correct.mean()),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "per_class": {
            name: {
                "precision": float(report[name]["precision"]),
                "recall": float(report[name]["recall"]),
                "f1": float(report[name]["f1-score"]),
                "support": int(report[name]["support"]),
            }
            for name in CLASS_NAMES
        },
        "roc_auc": roc,
        "ece": expected_calibration_error(probs.max(1), correct),
        "temperature": temperature,
        "ece_calibrated": expected_calibration_error(calibrated_probs.max(1), correct) if temperature else None,
        "accuracy_tta_flip": extras.get("accuracy_tta_flip"),
        "shifts": extras.get("shifts"),
        "n_leakage_free": int(clean.sum()),
        "accuracy_leakage_free": float(correct[clean].mean()) if clean.any() else None,
        "n_without_exact_twin": int(exact_clean.sum()),
        "accuracy_without_exact_twin": float(correct[exact_clean].mean()) if exact_clean.any() else None,
        "confusion_matrix": confusion_matrix(y, y_hat, labels=labels).tolist(),
        "intervals": metric_intervals(
            y, y_hat, probs.max(1), CLASS_NAMES, leakage_free=clean, seed=extras.get("seed", 0)
        ),
        "conformal": (conformal | {"sets": sets}) if conformal else None,
        "ood": extras.get("ood"),
        "scoring": extras.get("scoring"),
        "file_shortcut": shortcut_report(pred),
    }


def report_table(pred: pd.DataFrame) -> str:
    """sklearn's text report, the reference's table layout."""
    labels = list(range(len(CLASS_NAMES)))
    return classification_report(
        pred["label_idx"], pred["pred_idx"], labels=labels, target_names=list(CLASS_NAMES), digits=4, zero_division=0
    )


def write_metrics(metrics: dict, run_dir: str | Path) -> Path:
    return write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def interval_table(metrics: dict) -> pd.DataFrame:
    """Headline numbers with their 95 % bootstrap intervals, in percent (metrics.json's
    `intervals`), one row per metric."""
    intervals = metrics.get("intervals") or {}
    values = {
        "accuracy": metrics["accuracy"],
        "accuracy_leakage_free": metrics["accuracy_leakage_free"],
        "macro_f1": metrics["macro_f1"],
        "ece": metrics["ece"],
        **{f"recall_{name}": metrics["per_class"][name]["recall"] for name in CLASS_NAMES},
    }
    rows = [
        {"metric": name, "value_%": 100 * value, "low_%": 100 * intervals[name][0], "high_%": 100 * intervals[name][1]}
        for name, value in values.items()
        if value is not None and name in intervals
    ]
    return pd.DataFrame(rows).set_index("metric").round(2)


def prediction_set_table(metrics: dict) -> pd.DataFrame:
    """Coverage and mean size of the conformal prediction sets at each 1 - alpha: on all test
    images, the leakage-free ones, and the lowest coverage / largest mean size under any shift
    at the middle severity (when the shift suite ran)."""
    conformal = metrics.get("conformal") or {}
    summary = summary_of(metrics)
    rows = []
    for alpha, sets in (conformal.get("sets") or {}).items():
        row = {"target_coverage": 1 - float(alpha), "threshold": sets["threshold"]}
        for subset in ("test", "leakage_free"):
            row |= {f"{subset}_coverage": sets[subset]["coverage"], f"{subset}_set_size": sets[subset]["mean_set_size"]}
            row[f"{subset}_uncertain_share"] = sets[subset]["share_uncertain"]
        row["shifts_min_coverage"] = summary.middle_min_coverage.get(alpha) if summary else None
        row["shifts_max_set_size"] = summary.middle_max_set_size.get(alpha) if summary else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("target_coverage") if rows else pd.DataFrame()

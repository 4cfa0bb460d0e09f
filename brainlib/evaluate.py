"""Final report on the official Testing split: predictions once, then every metric from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from .config import CLASS_NAMES, Config
from .train import RunData, evaluate_batches, load_checkpoint, model_from_checkpoint, setup_torch, split_batches

ECE_BINS = 15


def default_checkpoint(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "checkpoints" / "best.pt"


def predict_test(cfg: Config, data: RunData, checkpoint: str | Path | None = None) -> pd.DataFrame:
    """Predict every test image once; write predictions.csv and logits.npy to the run folder."""
    device = setup_torch(cfg)
    checkpoint = Path(checkpoint or default_checkpoint(cfg))
    state = load_checkpoint(checkpoint, device)
    model = model_from_checkpoint(state, device).to(memory_format=torch.channels_last)
    _, _, logits = evaluate_batches(model, split_batches(cfg, data, "test", device), device)
    test = data.manifest[data.manifest["split"] == "test"].reset_index(drop=True)
    probs = logits.softmax(1).numpy()
    pred = test[["path", "label", "label_idx", "has_train_twin_exact", "has_train_twin_near"]].copy()
    pred["pred_idx"] = probs.argmax(1)
    pred["pred"] = [CLASS_NAMES[i] for i in pred["pred_idx"]]
    pred["confidence"] = probs.max(1)
    for i, name in enumerate(CLASS_NAMES):
        pred[f"p_{name}"] = probs[:, i]
    pred.attrs["checkpoint"] = str(checkpoint)
    pred.attrs["model"] = state["model_name"]
    pred.attrs["epoch"] = state.get("epoch")
    run_dir = Path(cfg.run_dir)
    pred.to_csv(run_dir / "predictions.csv", index=False)
    np.save(run_dir / "test_logits.npy", logits.numpy())
    return pred


def probabilities(pred: pd.DataFrame) -> np.ndarray:
    return pred[[f"p_{name}" for name in CLASS_NAMES]].to_numpy()


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
    bins = calibration_bins(confidence, correct, n_bins)
    used = bins[bins["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / max(len(confidence), 1))


def compute_metrics(pred: pd.DataFrame) -> dict:
    """Every headline number from the saved predictions (stable keys: see metrics.json)."""
    y, y_hat, probs = pred["label_idx"].to_numpy(), pred["pred_idx"].to_numpy(), probabilities(pred)
    correct = y == y_hat
    labels = list(range(len(CLASS_NAMES)))
    report = classification_report(y, y_hat, labels=labels, target_names=list(CLASS_NAMES), output_dict=True, zero_division=0)
    clean = ~(pred["has_train_twin_exact"].astype(bool) | pred["has_train_twin_near"].astype(bool)).to_numpy()
    exact_clean = ~pred["has_train_twin_exact"].astype(bool).to_numpy()
    roc = {}
    for i, name in enumerate(CLASS_NAMES):
        positives = y == i
        roc[name] = float(roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(y) else None
    return {
        "model": pred.attrs.get("model"),
        "checkpoint": pred.attrs.get("checkpoint"),
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
        "n_leakage_free": int(clean.sum()),
        "accuracy_leakage_free": float(correct[clean].mean()) if clean.any() else None,
        "n_without_exact_twin": int(exact_clean.sum()),
        "accuracy_without_exact_twin": float(correct[exact_clean].mean()) if exact_clean.any() else None,
        "confusion_matrix": confusion_matrix(y, y_hat, labels=labels).tolist(),
    }


def report_table(pred: pd.DataFrame) -> str:
    """sklearn's text report, the reference's table layout."""
    labels = list(range(len(CLASS_NAMES)))
    return classification_report(
        pred["label_idx"], pred["pred_idx"], labels=labels, target_names=list(CLASS_NAMES), digits=4, zero_division=0
    )


def write_metrics(metrics: dict, run_dir: str | Path) -> Path:
    path = Path(run_dir) / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(path)
    return path

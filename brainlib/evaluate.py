"""Final report on the official Testing split: predictions once, then every metric from them.

Scores a checkpoint through the one inference path (checkpoint.load_for_inference,
infer.predict_logits) and never writes to the checkpoint: a temperature or conformal thresholds
missing from an old checkpoint are fitted on the validation split and kept in metrics.json.
Every headline number carries a bootstrap interval (brainlib.stats).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from .atomic import atomic_path, write_text
from .checkpoint import InferenceModel, load_for_inference
from .config import CLASS_NAMES, Config
from .infer import calibrate, calibration_state, conformal_state, predict_logits, setup_torch
from .loader import RunData, rows_batches, split_batches
from .shifts import SEVERITIES, SHIFTS
from .stats import ECE_BINS, ece, metric_intervals, prediction_sets, set_coverage


def default_checkpoint(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "checkpoints" / "best.pt"


def calibration_of(net: InferenceModel, cfg: Config, data: RunData, device: str) -> dict:
    """The checkpoint's temperature and conformal thresholds; what it lacks is fitted here on the
    run's val split (the one its epoch was selected on) and never written back."""
    if net.temperature is not None and net.conformal is not None:
        return {"temperature": net.temperature, "conformal": net.conformal, "source": "checkpoint"}
    val = split_batches(cfg, data, "val", device)
    logits, labels = predict_logits(net.model, val, device), val.labels.cpu()
    if net.temperature is None:
        return calibration_state(logits, labels) | {"source": "validation split (fitted by evaluate)"}
    conformal = conformal_state(calibrate(logits, net.temperature), labels)
    return {"temperature": net.temperature, "conformal": conformal, "source": "temperature: checkpoint; conformal: validation split"}


def calibrate_checkpoint(cfg: Config, data: RunData, checkpoint: str | Path, out: str | Path) -> dict:
    """A copy of `checkpoint` at `out` with what it lacks of temperature and conformal thresholds
    fitted on the run's val split (for checkpoints trained before best.pt stored them); returns
    what it stored. The val split must be the one the checkpoint was selected on:
    cli.checkpoint_config takes the seed and val fraction from the checkpoint."""
    from .checkpoint import load_checkpoint, save_checkpoint

    device = setup_torch(cfg)
    net = load_for_inference(checkpoint, device)
    cfg = cfg.replace(image_size=net.image_size, cache_size=net.cache_size)
    fitted = {k: v for k, v in calibration_of(net.replace(conformal=None), cfg, data, device).items() if k != "source"}
    save_checkpoint(load_checkpoint(checkpoint) | fitted, out)
    return fitted | {"out": str(out)}


NOTUMOR = CLASS_NAMES.index("notumor")


def sample_rows(rows: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of n of `rows` (all of them when n is 0 or too large)."""
    if not n or n >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = rows[labels == c]
        k = max(1, round(n * len(members) / len(rows)))
        picked.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def shift_table(
    cfg: Config, data: RunData, model, device: str, severities=SEVERITIES, sample: int = 0, calibration: dict | None = None
) -> pd.DataFrame:
    """Accuracy, tumour recall (a tumour called anything but notumor) and predicted-class counts
    on the test images, clean and under every shift of the suite at each severity; with a
    calibration (calibration_of), the coverage and mean size of the conformal prediction sets.
    A progress bar counts the (shift, severity) pairs: the full table takes most of an hour on a
    2-core CPU (51 min for EfficientNet-Lite0 at 256 px)."""
    from tqdm.auto import tqdm

    rows = data.rows("test")
    rows = sample_rows(rows, data.manifest["label_idx"].to_numpy()[rows], sample, cfg.seed)
    labels = data.manifest["label_idx"].to_numpy()[rows]
    clean = np.asarray(data.images[rows])
    tumour = labels != NOTUMOR
    records = []

    def score(images: np.ndarray, **what) -> None:
        logits = predict_logits(model, rows_batches(cfg, data, rows, device, images=images), device)
        pred = logits.argmax(1).numpy()
        counts = np.bincount(pred, minlength=len(CLASS_NAMES))
        sets = {}
        if calibration:
            probs = calibrate(logits, calibration["temperature"]).numpy()
            for alpha, threshold in calibration["conformal"]["thresholds"].items():
                covered = set_coverage(prediction_sets(probs, threshold), labels)
                sets |= {f"coverage_{alpha}": covered["coverage"], f"set_size_{alpha}": covered["mean_set_size"]}
        records.append(
            {
                **what,
                "n": len(rows),
                "accuracy": float((pred == labels).mean()),
                "tumour_recall": float((pred[tumour] != NOTUMOR).mean()) if tumour.any() else None,
                **{f"pred_{name}": int(k) for name, k in zip(CLASS_NAMES, counts, strict=True)},
                **sets,
            }
        )

    score(clean, shift="clean", family="none", seen=None, severity=0, param="")
    pairs = [(shift, severity) for shift in SHIFTS.values() for severity in severities]
    for shift, severity in tqdm(pairs, desc="shift suite", mininterval=10):
        score(
            shift(clean, severity),
            shift=shift.name,
            family=shift.family,
            seen=shift.seen_in_training,
            severity=severity,
            param=str(shift.params[severity - 1]),
        )
    return pd.DataFrame(records)


def shift_summary(table: pd.DataFrame) -> dict:
    """Mean and worst accuracy over all shifts and severities and at the middle one, seen vs
    held-out families, the lowest tumour recall, and the clean accuracy on the same images."""
    shifted = table[table["shift"] != "clean"]
    middle = shifted[shifted["severity"] == 2] if (shifted["severity"] == 2).any() else shifted
    worst = middle.loc[middle["accuracy"].idxmin()]
    coverage = {f"middle_min_{column}": float(middle[column].min()) for column in middle.columns if column.startswith("coverage_")} | {
        f"middle_max_{column}": float(middle[column].max()) for column in middle.columns if column.startswith("set_size_")
    }
    return coverage | {
        "n_images": int(table["n"].iloc[0]),
        "severities": sorted(int(s) for s in shifted["severity"].unique()),
        "clean_accuracy": float(table.loc[table["shift"] == "clean", "accuracy"].iloc[0]),
        "mean_accuracy": float(shifted["accuracy"].mean()),
        "worst_accuracy": float(shifted["accuracy"].min()),
        "middle_mean_accuracy": float(middle["accuracy"].mean()),
        "middle_worst_accuracy": float(worst["accuracy"]),
        "middle_worst_shift": str(worst["shift"]),
        "middle_seen_accuracy": float(middle.loc[middle["seen"] == True, "accuracy"].mean()),  # noqa: E712
        "middle_held_out_accuracy": float(middle.loc[middle["seen"] == False, "accuracy"].mean()),  # noqa: E712
        "middle_min_tumour_recall": float(middle["tumour_recall"].min()),
    }


def shift_pivot(shifts: dict) -> pd.DataFrame:
    """Accuracy per shift (rows, by family) and severity (columns); the clean accuracy on the
    same images is in the summary."""
    table = pd.DataFrame(shifts["table"])
    table = table[table["shift"] != "clean"]
    pivot = table.pivot_table(index=["family", "shift"], columns="severity", values="accuracy", sort=False)
    pivot.columns = [f"severity {c}" for c in pivot.columns]
    return pivot


def predict_test(
    cfg: Config,
    data: RunData,
    checkpoint: str | Path | None = None,
    shifts: bool = True,
    shift_severities=SEVERITIES,
    shift_sample: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Predict every test image once; write predictions.csv and test_logits.npy to the run folder.

    Also returns the extras measured on the same checkpoint: temperature and conformal
    thresholds (the checkpoint's, else fitted on val), accuracy with flip TTA, and the shift suite's table (brainlib.shifts) at `shift_severities`,
    on a stratified sample of `shift_sample` test images (0: all)."""
    device = setup_torch(cfg)
    checkpoint = Path(checkpoint or default_checkpoint(cfg))
    net = load_for_inference(checkpoint, device)
    cfg = cfg.replace(image_size=net.image_size, cache_size=net.cache_size)  # the size the weights were trained at
    model = net.model
    test_batches = split_batches(cfg, data, "test", device)
    logits = predict_logits(model, test_batches, device)
    test = data.manifest[data.manifest["split"] == "test"].reset_index(drop=True)
    probs = logits.softmax(1).numpy()
    pred = test[["path", "label", "label_idx", "has_train_twin_exact", "has_train_twin_near"]].copy()
    pred["pred_idx"] = probs.argmax(1)
    pred["pred"] = [CLASS_NAMES[i] for i in pred["pred_idx"]]
    pred["confidence"] = probs.max(1)
    for i, name in enumerate(CLASS_NAMES):
        pred[f"p_{name}"] = probs[:, i]
    run_dir = Path(cfg.run_dir)
    with atomic_path(run_dir / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    np.save(run_dir / "test_logits.npy", logits.numpy())
    y = torch.tensor(pred["label_idx"].to_numpy())
    calibration = calibration_of(net, cfg, data, device)
    extras = {
        "model": net.model_name,
        "checkpoint": str(checkpoint),
        "epoch": net.state.get("epoch"),
        "temperature": calibration["temperature"],
        "conformal": calibration["conformal"] | {"source": calibration["source"]},
        "accuracy_tta_flip": float((predict_logits(model, test_batches, device, tta=True).argmax(1) == y).float().mean()),
        "seed": cfg.seed,
    }
    if shifts:
        table = shift_table(cfg, data, model, device, shift_severities, shift_sample, calibration)
        extras["shifts"] = {"summary": shift_summary(table), "sample": shift_sample, "table": table.to_dict("records")}
    return pred, extras


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
    return float(ece(confidence, correct, n_bins)) if len(confidence) else 0.0


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): log-probabilities differ from logits by a constant."""
    return calibrate(torch.from_numpy(np.log(np.clip(probs, 1e-300, None))), temperature).numpy()


def compute_metrics(pred: pd.DataFrame, extras: dict | None = None) -> dict:
    """Every headline number from the saved predictions (stable keys: see metrics.json)."""
    extras = extras or {}
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
    temperature = extras.get("temperature")
    calibrated_probs = calibrated(probs, temperature) if temperature else None
    conformal = extras.get("conformal")
    sets = {}
    if conformal and temperature:
        for alpha, threshold in conformal["thresholds"].items():
            chosen = prediction_sets(calibrated_probs, threshold)
            sets[alpha] = {
                "threshold": threshold,
                "test": set_coverage(chosen, y),
                "leakage_free": set_coverage(chosen[clean], y[clean]),
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
        "intervals": metric_intervals(y, y_hat, probs.max(1), CLASS_NAMES, leakage_free=clean, seed=extras.get("seed", 0)),
        "conformal": (conformal | {"sets": sets}) if conformal else None,
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
    summary = (metrics.get("shifts") or {}).get("summary") or {}
    rows = []
    for alpha, sets in (conformal.get("sets") or {}).items():
        row = {"target_coverage": 1 - float(alpha), "threshold": sets["threshold"]}
        for subset in ("test", "leakage_free"):
            row |= {f"{subset}_coverage": sets[subset]["coverage"], f"{subset}_set_size": sets[subset]["mean_set_size"]}
            row[f"{subset}_uncertain_share"] = sets[subset]["share_uncertain"]
        row["shifts_min_coverage"] = summary.get(f"middle_min_coverage_{alpha}")
        row["shifts_max_set_size"] = summary.get(f"middle_max_set_size_{alpha}")
        rows.append(row)
    return pd.DataFrame(rows).set_index("target_coverage") if rows else pd.DataFrame()

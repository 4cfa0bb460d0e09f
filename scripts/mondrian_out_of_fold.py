"""Class-conditional (Mondrian) conformal sets judged out of fold: each label-audit fold model fits 99 %
thresholds on its own validation carve twice, once over all classes (what checkpoints store) and once per
class, and both are applied to the fold's held-out images; coverage per split on disk and class, with exact
95 % intervals, and set size.

    .venv/bin/python scripts/mondrian_out_of_fold.py runs/<audit run> [--alpha 0.01]

The audit run is one made by `python -m brainlib audit-labels` whose folds' held-out probabilities are on disk
(label_audit/fold<k>/held_out_probs.npy) with the models that made them; each fold is scored at the side and
with the temperature its probabilities were (held_out_calibration.json, else the model's own).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from brainlib.calibration import (
    calibrate,
    class_conditional_thresholds,
    conformal_threshold,
    coverage_text,
    prediction_sets,
)
from brainlib.checkpoint import best_checkpoint, load_for_inference, scored_at
from brainlib.config import CLASS_NAMES, run_config
from brainlib.errors import SettingsError
from brainlib.infer import predict_logits
from brainlib.label_audit import AUDIT_DIR, HELD_OUT_CALIBRATION, fold_run_data, held_out_of_fold
from brainlib.loader import load_run_data, split_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    cfg = run_config(args.run_dir)
    data = load_run_data(cfg)
    audit = Path(args.run_dir) / AUDIT_DIR
    folds = pd.read_csv(audit / "folds.csv")["fold"].to_numpy()
    labels = data.manifest["label_idx"].to_numpy()
    on_disk = data.manifest["split_on_disk"].to_numpy()
    probs = np.full((len(labels), len(CLASS_NAMES)), np.nan)
    marginal = np.zeros(probs.shape, bool)
    per_class = np.zeros(probs.shape, bool)
    for fold in sorted(set(folds[folds >= 0])):
        fold_dir = audit / f"fold{fold}"
        rows = folds == fold
        try:
            probs[rows] = held_out_of_fold(fold_dir, data.manifest["path"].to_numpy()[rows].tolist())
        except SettingsError as error:
            raise SystemExit(f"error: {error}") from None
        recorded = fold_dir / HELD_OUT_CALIBRATION
        record = json.loads(recorded.read_text()) if recorded.exists() else {}
        fold_data = fold_run_data(data, folds, fold, cfg.val_fraction, cfg.seed)
        with tempfile.TemporaryDirectory() as tmp:
            best = best_checkpoint(fold_dir)
            path = scored_at(best, record["scoring_size"], Path(tmp) / "s.pt") if record else best
            net = load_for_inference(path, "cpu")
            val = split_batches(net.scoring_config(cfg), fold_data, "val", "cpu")
            temperature = record.get("temperature", net.temperature)
            val_probs = calibrate(predict_logits(net.model, val, "cpu"), temperature).numpy()
            val_labels = val.labels.cpu().numpy()
        one = conformal_threshold(val_probs, val_labels, args.alpha)
        each = class_conditional_thresholds(val_probs, val_labels, args.alpha)
        counts = [int((val_labels == k).sum()) for k in range(len(CLASS_NAMES))]
        print(
            f"fold {fold}: threshold {one:.4f}; per class {np.round(each, 4).tolist()} from {counts} images", flush=True
        )
        marginal[rows] = prediction_sets(probs[rows], one)
        per_class[rows] = prediction_sets(probs[rows], each)
    print(f"{1 - args.alpha:.0%} sets out of fold:")
    for name, sets in (("one threshold", marginal), ("per class (Mondrian)", per_class)):
        for split in ("Training", "Testing"):
            part = on_disk == split
            if part.any():
                print(f"{name}, {split}: {coverage_text(sets[part], labels[part])}")


if __name__ == "__main__":
    main()

"""Flip test-time augmentation judged without Testing: each label-audit fold model scores the Training
images of its held-out fold as is and with the mirror view (a one-member ensemble with flip, through
the one inference path), and the two are paired image by image (McNemar's exact test).

    .venv/bin/python scripts/flip_tta_out_of_fold.py runs/<audit run> [--folds 0,1,2,3,4]

The audit run is one made by `python -m brainlib audit-labels` (its fold models are kept under
label_audit/fold<k>/checkpoints). Logits are not temperature-scaled: accuracy does not need it, and
the log-loss is compared view against view.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from brainlib.checkpoint import best_checkpoint, ensemble_state, load_for_inference, save_checkpoint
from brainlib.config import run_config
from brainlib.infer import predict_logits
from brainlib.label_audit import AUDIT_DIR, fold_run_data
from brainlib.loader import load_run_data, rows_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--folds", default="", help="comma-separated fold numbers (default: every fold on disk)")
    args = parser.parse_args()
    cfg = run_config(args.run_dir)
    data = load_run_data(cfg)
    audit = Path(args.run_dir) / AUDIT_DIR
    listed = pd.read_csv(audit / "folds.csv")
    if not (listed["path"].to_numpy() == data.manifest["path"].to_numpy()).all():
        raise SystemExit(f"error: {audit / 'folds.csv'} lists other images than the run's manifest")
    folds = listed["fold"].to_numpy()
    chosen = [int(k) for k in args.folds.split(",")] if args.folds else sorted(set(folds[folds >= 0]))
    labels = data.manifest["label_idx"].to_numpy()
    training = (data.manifest["split_on_disk"] == "Training").to_numpy()
    correct = {"plain": [], "flip": []}
    nll = {"plain": [], "flip": []}
    with tempfile.TemporaryDirectory() as tmp:
        for fold in chosen:
            best = best_checkpoint(audit / f"fold{fold}")
            mirrored = save_checkpoint(ensemble_state([best], flip=True), Path(tmp) / f"flip{fold}.pt")
            rows = np.flatnonzero((folds == fold) & training)
            fold_data = fold_run_data(data, folds, fold, cfg.val_fraction, cfg.seed)
            y = torch.as_tensor(labels[rows])
            line = []
            for view, path in (("plain", best), ("flip", mirrored)):
                net = load_for_inference(path, "cpu")
                logits = predict_logits(net.model, rows_batches(net.scoring_config(cfg), fold_data, rows, "cpu"), "cpu")
                correct[view].append((logits.argmax(1) == y).numpy())
                nll[view].append(torch.nn.functional.cross_entropy(logits.float(), y, reduction="none").numpy())
                line.append(f"{view} {correct[view][-1].mean():.2%}")
            print(f"fold {fold}: {len(rows)} Training images, " + ", ".join(line), flush=True)
    plain, flip = np.concatenate(correct["plain"]), np.concatenate(correct["flip"])
    fixed, broken = int((flip & ~plain).sum()), int((plain & ~flip).sum())
    p = binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
    print(
        f"{len(plain)} images: plain {plain.mean():.2%}, mirror view too {flip.mean():.2%}; "
        f"{fixed} fixed, {broken} broken (McNemar p = {p:.3g}); "
        f"log-loss {np.concatenate(nll['plain']).mean():.4f} -> {np.concatenate(nll['flip']).mean():.4f}"
    )


if __name__ == "__main__":
    main()

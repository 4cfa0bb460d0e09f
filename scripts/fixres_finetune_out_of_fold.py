"""A FixRes fine-tune judged without Testing: each label-audit fold model is fine-tuned for a short while at
the side it scores at, on its own fold's training images (the whole slice, as it is scored: no zooming crop),
then both it and the fold model as it was score the Training images of its held-out fold at that side,
paired image by image (McNemar's exact test); --split Testing scores the held-out Testing images instead.

    .venv/bin/python scripts/fixres_finetune_out_of_fold.py runs/<audit run> [--side 272] [--epochs 1] \
        [--lr 1e-4] [--folds 0,1,2,3,4] [--split Training]

Touvron et al. (Fixing the train-test resolution discrepancy, 2019) fine-tune at the test side so that the
network's statistics match what it sees when scored. Each fine-tune is a run folder
label_audit/fold<k>/fixres_<side>/ (the one training loop, resumable); the fold models are not changed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainlib.checkpoint import best_checkpoint, load_for_inference, scored_at
from brainlib.config import run_config
from brainlib.infer import predict_logits
from brainlib.label_audit import AUDIT_DIR, fold_run_data
from brainlib.loader import load_run_data, rows_batches
from brainlib.stats import paired_comparison
from brainlib.train import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--side", type=int, default=272)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--folds", default="")
    parser.add_argument("--split", default="Training", choices=["Training", "Testing"])
    args = parser.parse_args()
    cfg = run_config(args.run_dir)
    data = load_run_data(cfg)
    audit = Path(args.run_dir) / AUDIT_DIR
    folds = pd.read_csv(audit / "folds.csv")["fold"].to_numpy()
    chosen = [int(k) for k in args.folds.split(",")] if args.folds else sorted(set(folds[folds >= 0]))
    labels = data.manifest["label_idx"].to_numpy()
    on_split = (data.manifest["split_on_disk"] == args.split).to_numpy()
    right: dict[str, list] = {"as trained": [], "fine-tuned": []}
    for fold in chosen:
        fold_dir = audit / f"fold{fold}"
        fold_data = fold_run_data(data, folds, fold, cfg.val_fraction, cfg.seed)
        tuned_cfg = cfg.replace(
            run_dir=str(fold_dir / f"fixres_{args.side}"),
            init_checkpoint=str(best_checkpoint(fold_dir).resolve()),
            image_size=args.side,
            test_image_size=0,
            crop_scale_min=1.0,
            epochs=args.epochs,
            lr=args.lr,
        )
        train(tuned_cfg, resume=True, progress=True, data=fold_data)
        rows = np.flatnonzero((folds == fold) & on_split)
        y = torch.as_tensor(labels[rows])
        line = []
        with tempfile.TemporaryDirectory() as tmp:
            views = {
                "as trained": scored_at(best_checkpoint(fold_dir), args.side, Path(tmp) / "s.pt"),
                "fine-tuned": best_checkpoint(tuned_cfg.run_dir),
            }
            for view, path in views.items():
                net = load_for_inference(path, "cpu")
                logits = predict_logits(net.model, rows_batches(net.scoring_config(cfg), fold_data, rows, "cpu"), "cpu")
                right[view].append((logits.argmax(1) == y).numpy())
                line.append(f"{view} {right[view][-1].mean():.2%}")
        print(f"fold {fold}: {len(rows)} {args.split} images at {args.side} px: " + ", ".join(line), flush=True)
    paired = paired_comparison(np.concatenate(right["fine-tuned"]), np.concatenate(right["as trained"]))
    low, high = paired["difference_interval"]
    print(
        f"{paired['n']} images: as trained {paired['accuracy_b']:.2%}, fine-tuned {paired['accuracy_a']:.2%} "
        f"({paired['difference']:+.2%} [{low:+.2%}, {high:+.2%}]); {paired['only_a_correct']} fixed, "
        f"{paired['only_b_correct']} broken (McNemar p = {paired['mcnemar_exact_p']:.3g})"
    )


if __name__ == "__main__":
    main()

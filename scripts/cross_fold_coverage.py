"""Per-class coverage of 99 % prediction sets out of fold, with thresholds fitted on more calibration images:
each fold's held-out images get sets from the other folds' out-of-fold Training scores (≈4,570 images,
≈1,100 a class, in duplicate groups apart from the fold's), once with one threshold over all classes and once
per class (Mondrian), beside the sets of each fold model's own validation carve (≈590 images, what a
checkpoint stores).

    .venv/bin/python scripts/cross_fold_coverage.py docs/label_audit [--alpha 0.01] \
        [--verdicts docs/label_audit/verdicts.csv]

Reads only what the audit commits per fold (held_out_paths.txt, held_out_probs.npy, already
temperature-scaled, and held_out_calibration.json; in a run folder without that file, the fold model's own
thresholds), so it runs from a fresh clone in seconds. The calibration
scores come from other fold models than the one scoring the image (cross-conformal), whose guarantee is
1 - 2 alpha in the worst case rather than 1 - alpha; the Training rows check it where the images are
exchangeable with the calibration ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from brainlib.calibration import (
    class_conditional_thresholds,
    conformal_threshold,
    coverage_text,
    prediction_sets,
)
from brainlib.config import CLASS_NAMES
from brainlib.errors import SettingsError
from brainlib.label_audit import held_out_thresholds, read_held_out


def read_folds(audit: Path) -> tuple[pd.DataFrame, np.ndarray, dict[int, dict]]:
    """Every held-out image (path, split on disk, label, fold), its probabilities and each fold's
    carve thresholds by alpha."""
    rows, probs, carve = [], [], {}
    fold_dirs = sorted(audit.glob("fold[0-9]*"), key=lambda d: int(d.name[4:]))
    if not fold_dirs:
        raise SystemExit(f"error: no fold folder under {audit}")
    for fold_dir in fold_dirs:
        fold = int(fold_dir.name[4:])
        try:
            paths, fold_probs = read_held_out(fold_dir)
        except SettingsError as error:
            raise SystemExit(f"error: {error}") from None
        carve[fold] = held_out_thresholds(fold_dir)
        rows += [(p, p.split("/")[0], CLASS_NAMES.index(p.split("/")[1]), fold) for p in paths]
        probs.append(fold_probs)
    return pd.DataFrame(rows, columns=["path", "split_on_disk", "label_idx", "fold"]), np.concatenate(probs), carve


def cross_fold_thresholds(probs: np.ndarray, images: pd.DataFrame, fold: int, alpha: float) -> tuple[float, np.ndarray]:
    """The one threshold and the per-class ones fitted on the out-of-fold Training scores of every fold
    but `fold` (never a Testing image, never the fold's own)."""
    labels = images["label_idx"].to_numpy()
    calibration = (images["fold"] != fold).to_numpy() & (images["split_on_disk"] == "Training").to_numpy()
    one = conformal_threshold(probs[calibration], labels[calibration], alpha)
    return one, class_conditional_thresholds(probs[calibration], labels[calibration], alpha)


def all_sets(
    probs: np.ndarray, images: pd.DataFrame, carve: dict[int, dict], cross: dict[int, tuple], alpha: float
) -> dict[str, np.ndarray]:
    """Each image's set under the three calibrations, each from its own fold's thresholds (`cross`: each
    fold's `cross_fold_thresholds`)."""
    kinds = {name: np.zeros(probs.shape, bool) for name in ("fold carve", "cross-fold, one", "cross-fold, per class")}
    for fold in sorted(carve):
        rows = (images["fold"] == fold).to_numpy()
        one, per_class = cross[fold]
        kinds["fold carve"][rows] = prediction_sets(probs[rows], carve[fold][str(alpha)])
        kinds["cross-fold, one"][rows] = prediction_sets(probs[rows], one)
        kinds["cross-fold, per class"][rows] = prediction_sets(probs[rows], per_class)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("audit_dir", help="a label audit's folder: docs/label_audit or runs/<audit>/label_audit")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--verdicts", default="docs/label_audit/verdicts.csv", help="a reader's verdicts")
    args = parser.parse_args()
    images, probs, carve = read_folds(Path(args.audit_dir))
    if any(str(args.alpha) not in thresholds for thresholds in carve.values()):
        raise SystemExit(f"error: the folds store no carve threshold at alpha {args.alpha}")
    labels = images["label_idx"].to_numpy()
    cross = {fold: cross_fold_thresholds(probs, images, fold, args.alpha) for fold in sorted(carve)}
    for fold, (one, per_class) in cross.items():
        print(
            f"fold {fold}: carve {carve[fold][str(args.alpha)]:.4f}; cross-fold one {one:.4f}, "
            f"per class {np.round(per_class, 4).tolist()}"
        )
    kinds = all_sets(probs, images, carve, cross, args.alpha)
    for name, sets in kinds.items():
        print(f"{1 - args.alpha:.0%} sets, {name}:")
        for split in ("Training", "Testing"):
            part = (images["split_on_disk"] == split).to_numpy()
            print(f"  {split}: {coverage_text(sets[part], labels[part])}")
    verdicts = (
        pd.read_csv(args.verdicts) if Path(args.verdicts).is_file() else pd.DataFrame(columns=["path", "verdict"])
    )
    verdict_of = dict(zip(verdicts["path"], verdicts["verdict"], strict=True))
    sets = kinds["cross-fold, per class"]
    missed = ~sets[np.arange(len(labels)), labels] & (images["split_on_disk"] == "Testing").to_numpy()
    print(f"Testing images outside their per-class set: {missed.sum()}")
    for i in np.flatnonzero(missed):
        answered = CLASS_NAMES[int(probs[i].argmax())]
        print(
            f"  {images['path'][i]}: p(given) {probs[i, labels[i]]:.3f}, answered {answered} "
            f"{probs[i].max():.3f}; verdict: {verdict_of.get(images['path'][i], '-')}"
        )


if __name__ == "__main__":
    main()

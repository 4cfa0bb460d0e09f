"""Test-time choices judged without Testing: each label-audit fold model scores the Training images of
its held-out fold in several views, through the one inference path, and every view is paired image by
image with the first (McNemar's exact test). The views: the model at each side in --sizes (the first is
the baseline; a checkpoint copy whose recipe scores at that side), with --flip the mirror view too
(a one-member ensemble with flip, at the baseline's side: the first of --sizes, else the model's own), and with --averages the model at
several sides at once (an ensemble of its copies at those sides: the mean of their log-probabilities).

    .venv/bin/python scripts/views_out_of_fold.py runs/<audit run> [--flip] [--sizes 224,256,272,288] \
        [--averages 272+320,256+288+320] [--folds 0,1,2,3,4] [--split Testing]

--split Testing scores the fold's held-out Testing images instead: the check, on images no choice looked at,
of a view chosen on Training. With two or more --sizes it also names the side the rule picks: the smallest side
within one standard error of the most accurate one (the rule that chose the 224-px recipe's 272 px, as in
docs/results.md), so a choice never rests on a difference the images cannot resolve.

The audit run is one made by `python -m brainlib audit-labels` (its fold models are kept under
label_audit/fold<k>/checkpoints). Logits are not temperature-scaled: accuracy does not need it, and the
log-loss is compared view against view. Each side scored on a CPU in ONNX Runtime is one export of the
model; BRAIN_CPU_ENGINE=torch scores in PyTorch without exports.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainlib.checkpoint import best_checkpoint, ensemble_state, load_for_inference, save_checkpoint, scored_at
from brainlib.config import run_config
from brainlib.infer import predict_logits
from brainlib.label_audit import AUDIT_DIR, fold_run_data
from brainlib.loader import load_run_data, rows_batches
from brainlib.stats import paired_comparison


def view_checkpoints(best: Path, sizes: list[int], flip: bool, averages: list[list[int]], tmp: Path) -> dict[str, Path]:
    """{view name: checkpoint}: the fold model at each side (its recipe's test side set to it), the
    model at several sides at once, and the mirror view too at the baseline's side."""
    name = best.parent.parent.name
    copies: dict[int, Path] = {}  # one copy per side, shared by the views that use it

    def at(size: int) -> Path:
        if size not in copies:
            copies[size] = scored_at(best, size, tmp / f"{name}-{size}.pt")
        return copies[size]

    views = {f"{size} px": at(size) for size in sizes}
    for sides in averages:
        views["+".join(map(str, sides)) + " px"] = save_checkpoint(
            ensemble_state([at(size) for size in sides]), tmp / f"{name}-{'+'.join(map(str, sides))}.pt"
        )
    if flip:  # at the baseline's side: the first of --sizes, else the model's own
        views["mirror view"] = save_checkpoint(
            ensemble_state([at(sizes[0]) if sizes else best], flip=True), tmp / f"{name}-flip.pt"
        )
    return views


def smallest_within_one_se(right_by_side: dict[int, float], n: int) -> tuple[int, float]:
    """(side, standard error): the smallest side whose accuracy is within one binomial standard error of the
    best side's, and that standard error (a fraction), over n images."""
    best = max(right_by_side.values())
    se = float(np.sqrt(best * (1 - best) / n))
    return min(side for side, right in right_by_side.items() if right >= best - se), se


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--folds", default="", help="comma-separated fold numbers (default: every fold on disk)")
    parser.add_argument("--sizes", default="", help="comma-separated sides to score at (default: the model's own)")
    parser.add_argument("--flip", action="store_true", help="the mirror view too")
    parser.add_argument("--split", default="Training", choices=["Training", "Testing"], help="which held-out images")
    parser.add_argument(
        "--averages", default="", help="comma-separated groups of sides joined by +, each scored at once"
    )
    args = parser.parse_args()
    cfg = run_config(args.run_dir)
    data = load_run_data(cfg)
    audit = Path(args.run_dir) / AUDIT_DIR
    listed = pd.read_csv(audit / "folds.csv")
    if not (listed["path"].to_numpy() == data.manifest["path"].to_numpy()).all():
        raise SystemExit(f"error: {audit / 'folds.csv'} lists other images than the run's manifest")
    folds = listed["fold"].to_numpy()
    chosen = [int(k) for k in args.folds.split(",")] if args.folds else sorted(set(folds[folds >= 0]))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else []
    averages = [[int(s) for s in group.split("+")] for group in args.averages.split(",")] if args.averages else []
    labels = data.manifest["label_idx"].to_numpy()
    on_split = (data.manifest["split_on_disk"] == args.split).to_numpy()
    correct: dict[str, list] = {}
    nll: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fold in chosen:
            best = best_checkpoint(audit / f"fold{fold}")
            views = {"as trained": best} if not sizes else {}
            views |= view_checkpoints(best, sizes, args.flip, averages, Path(tmp))
            rows = np.flatnonzero((folds == fold) & on_split)
            fold_data = fold_run_data(data, folds, fold, cfg.val_fraction, cfg.seed)
            y = torch.as_tensor(labels[rows])
            line = []
            for view, path in views.items():
                net = load_for_inference(path, "cpu")
                logits = predict_logits(net.model, rows_batches(net.scoring_config(cfg), fold_data, rows, "cpu"), "cpu")
                correct.setdefault(view, []).append((logits.argmax(1) == y).numpy())
                nll.setdefault(view, []).append(
                    torch.nn.functional.cross_entropy(logits.float(), y, reduction="none").numpy()
                )
                line.append(f"{view} {correct[view][-1].mean():.2%}")
            print(f"fold {fold}: {len(rows)} {args.split} images, " + ", ".join(line), flush=True)
    first = next(iter(correct))
    base = np.concatenate(correct[first])
    print(f"{len(base)} images, each view against {first}:")
    for view in correct:
        paired = paired_comparison(np.concatenate(correct[view]), base)
        print(
            f"  {view}: {paired['accuracy_a']:.2%}; {paired['only_a_correct']} fixed, {paired['only_b_correct']} "
            f"broken (McNemar p = {paired['mcnemar_exact_p']:.3g}); log-loss {np.concatenate(nll[view]).mean():.4f}"
        )
    if len(sizes) > 1:
        right = {size: float(np.concatenate(correct[f"{size} px"]).mean()) for size in sizes}
        side, se = smallest_within_one_se(right, len(base))
        best = max(right, key=right.get)
        print(
            f"the smallest side within one standard error ({se:.2%}) of the best ({best} px, {right[best]:.2%}): "
            f"{side} px ({right[side]:.2%})"
        )


if __name__ == "__main__":
    main()

"""A label audit's finished folds, read before the audit ends: each fold model's out-of-fold accuracy and
validation choice, confident learning over the images scored so far, the flags of an earlier audit found
again, how the fold models answer the images a reader has looked at, and whether each fold model's
temperature and 99 % / 95 % prediction sets (fitted on its own validation carve) keep their promise on the
images it never saw a copy of, per class; with --against, image by image against another audit's folds.

    .venv/bin/python scripts/audit_finished_folds.py runs/<audit run> \
        [--earlier docs/label_audit/three_epochs/label_issues.csv] [--verdicts docs/label_audit/verdicts.csv] \
        [--lesions docs/label_audit/notumor_with_lesion.txt] [--against docs/label_audit]

--against reads another audit's fold folders (fold<k>/held_out_probs.npy with held_out_paths.txt, as the
committed audit keeps them) and pairs the two audits' out-of-fold answers on the images both have scored
(paired bootstrap interval, McNemar's exact test), per split on disk: two recipes compared on thousands of
images that neither's fold model saw a copy of, where Testing's leakage-free part has 316.

The audit run is one made by `python -m brainlib audit-labels` (pooled Training and Testing). Confident
learning's per-class thresholds are learnt from the images scored so far, so its flags can move when the
other folds land: the finished audit's label_issues.csv is the list to cite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from brainlib.calibration import coverage_text, expected_calibration_error, prediction_sets
from brainlib.config import CLASS_NAMES
from brainlib.errors import SettingsError
from brainlib.label_audit import (
    AUDIT_DIR,
    MEMBERS,
    audit_table,
    held_out_of_fold,
    held_out_thresholds,
    read_held_out,
)
from brainlib.ood import detection_auroc
from brainlib.stats import paired_comparison


def finished_folds(audit: Path, folds: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
    """Every image's out-of-fold probabilities (NaN where its fold has not finished) and the finished folds,
    each checked as the audit itself checks a fold it reuses."""
    probs = np.full((len(folds), len(CLASS_NAMES)), np.nan)
    done = []
    for fold in range(int(folds["fold"].max()) + 1):
        stored = audit / f"fold{fold}" / "held_out_probs.npy"
        if not stored.exists():
            continue
        rows = (folds["fold"] == fold).to_numpy()
        try:
            probs[rows] = held_out_of_fold(stored.parent, folds["path"][rows].tolist())
        except SettingsError as error:
            raise SystemExit(f"error: {error}") from None
        done.append(fold)
    return probs, done


def held_out_by_path(audit: Path) -> pd.DataFrame:
    """Every finished fold's held-out probabilities under an audit folder, one row per image path (a fold
    whose list and probabilities disagree in length is an error, not an unnoticed shift of rows)."""
    parts = []
    for stored in sorted(audit.glob("fold*/held_out_probs.npy")):
        try:
            paths, probs = read_held_out(stored.parent)
        except SettingsError as error:
            raise SystemExit(f"error: {error}") from None
        parts.append(pd.DataFrame(probs, index=pd.Index(paths, name="path")))
    if not parts:
        raise SystemExit(f"error: no finished fold under {audit}")
    return pd.concat(parts)


def against_report(
    manifest: pd.DataFrame, probs: np.ndarray, scored: np.ndarray, other: pd.DataFrame, name: str
) -> None:
    """This audit's out-of-fold answers against another audit's on the images both have scored, per split
    on disk: accuracy of each, the paired difference (this - other) with its bootstrap interval, and
    McNemar's exact test on the images only one of them gets right."""
    labels = manifest["label_idx"].to_numpy()
    position = other.index.get_indexer(manifest["path"])
    both = scored & (position >= 0)
    other_probs = np.full_like(probs, np.nan)
    other_probs[both] = other.to_numpy()[position[both]]
    this_right, other_right = probs.argmax(1) == labels, other_probs.argmax(1) == labels
    print(f"against {name}: {both.sum()} images scored by both")
    for split in ("Training", "Testing", "all"):
        part = both & ((manifest["split_on_disk"] == split).to_numpy() if split != "all" else True)
        if not part.any():
            continue
        paired = paired_comparison(this_right[part], other_right[part])
        low, high = paired["difference_interval"]
        print(
            f"  {split} ({paired['n']}): {paired['accuracy_a']:.2%} against {paired['accuracy_b']:.2%}, "
            f"{paired['difference']:+.2%} [{low:+.2%}, {high:+.2%}]; right only here {paired['only_a_correct']}, "
            f"only there {paired['only_b_correct']} (McNemar p = {paired['mcnemar_exact_p']:.2g})"
        )


def lesion_report(manifest: pd.DataFrame, probs: np.ndarray, scored: np.ndarray, lesions: list[str]) -> None:
    """How the fold models answer the listed "no tumour" images with a lesion against the other scored
    "no tumour" images of the same split: how many each calls a tumour (Fisher's exact test), and how well
    the out-of-fold probability of "no tumour" sets them apart (AUROC, with the Mann-Whitney U test's p-value)."""
    notumor = CLASS_NAMES.index("notumor")
    listed = manifest["path"].isin(lesions).to_numpy()
    splits = set(manifest.loc[listed, "split_on_disk"])
    peers = (manifest["label_idx"].to_numpy() == notumor) & manifest["split_on_disk"].isin(splits).to_numpy()
    lesion, other = listed & scored, peers & ~listed & scored
    if not lesion.any() or not other.any():
        print(f"lesion images: {lesion.sum()} of {listed.sum()} scored, {other.sum()} others: nothing to compare")
        return
    tumour = probs.argmax(1) != notumor
    table = [
        [int(tumour[lesion].sum()), int((~tumour[lesion]).sum())],
        [int(tumour[other].sum()), int((~tumour[other]).sum())],
    ]
    fisher = stats.fisher_exact(table, alternative="greater").pvalue
    p_lesion, p_other = probs[lesion, notumor], probs[other, notumor]
    u = stats.mannwhitneyu(p_other, p_lesion, alternative="greater")
    auroc = detection_auroc(1 - p_other, 1 - p_lesion)  # the lesion images as the "out" class
    print(
        f"lesion images scored: {lesion.sum()} of {listed.sum()}; called a tumour: {table[0][0]} "
        f"({', '.join(Path(p).stem for p in manifest['path'][lesion & tumour])}) against {table[1][0]} of the other "
        f"{other.sum()} 'no tumour' images (Fisher's exact p = {fisher:.2g}); their p(notumor) median "
        f"{np.median(p_lesion):.3f} against {np.median(p_other):.3f}: AUROC {auroc:.2f} (Mann-Whitney p = {u.pvalue:.2g})"
    )


def coverage_report(
    audit: Path, folds: pd.DataFrame, manifest: pd.DataFrame, probs: np.ndarray, done: list[int]
) -> None:
    """Each image's prediction sets from its own fold model's conformal thresholds (the held-out
    probabilities are already temperature-scaled), and the calibrated ECE, over the finished folds: per
    split on disk and per class, with exact (Clopper-Pearson) 95 % intervals on coverage. Out of fold,
    no image has a copy among its model's training images, so this is the leakage-free check of the
    guarantee with 5-20 times the images of the test set's leakage-free part."""
    labels = manifest["label_idx"].to_numpy()
    on_disk = manifest["split_on_disk"].to_numpy()
    fold_of = folds["fold"].to_numpy()
    scored = np.isin(fold_of, done)
    combined = [fold for fold in done if (audit / f"fold{fold}" / MEMBERS).exists()]
    if combined:  # the members' fold models are not kept, so nothing can fit the ensemble's thresholds
        print(f"prediction sets: none for folds {combined}, which combine other audits' probabilities")
        thresholds = {}
    else:
        thresholds = {fold: held_out_thresholds(audit / f"fold{fold}") for fold in done}
    for alpha in sorted(thresholds[done[0]] if thresholds else [], key=float):
        sets = np.zeros(probs.shape, bool)
        for fold in done:
            rows = fold_of == fold
            sets[rows] = prediction_sets(probs[rows], thresholds[fold][alpha])
        print(f"{1 - float(alpha):.0%} prediction sets out of fold (each fold model's own thresholds):")
        for split in ("Training", "Testing", "all"):
            part = scored & ((on_disk == split) if split != "all" else True)
            if not part.any():
                continue
            print(f"  {split}: {coverage_text(sets[part], labels[part])}")
    for split in ("Training", "Testing", "all"):
        part = scored & ((on_disk == split) if split != "all" else True)
        if not part.any():
            continue
        ece = expected_calibration_error(probs[part].max(1), probs[part].argmax(1) == labels[part])
        print(f"calibrated ECE out of fold, {split}: {ece:.2%} ({part.sum()} images)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument(
        "--earlier", default="docs/label_audit/three_epochs/label_issues.csv", help="an earlier audit's list"
    )
    parser.add_argument("--verdicts", default="docs/label_audit/verdicts.csv", help="a reader's verdicts")
    parser.add_argument(
        "--lesions",
        default="docs/label_audit/notumor_with_lesion.txt",
        help="'no tumour' images a reader saw a lesion in",
    )
    parser.add_argument("--against", default="", help="another audit's folder of fold<k>/ folders, to pair with")
    args = parser.parse_args()
    audit = Path(args.run_dir) / AUDIT_DIR
    manifest = pd.read_csv(Path(args.run_dir) / "manifest.csv")
    folds = pd.read_csv(audit / "folds.csv")
    if folds["path"].tolist() != manifest["path"].tolist():
        raise SystemExit(f"error: {audit / 'folds.csv'} lists other images than the run's manifest")
    probs, done = finished_folds(audit, folds)
    if not done:
        raise SystemExit(f"error: no finished fold under {audit}")
    scored = ~np.isnan(probs).any(1)
    labels = manifest["label_idx"].to_numpy()
    correct = probs.argmax(1) == labels
    on_disk = manifest["split_on_disk"].to_numpy()

    print(f"finished folds: {done} of {int(folds['fold'].max()) + 1}; {scored.sum()} of {len(scored)} images scored")
    for fold in done:
        rows = (folds["fold"] == fold).to_numpy()
        trained = audit / f"fold{fold}" / "train_summary.json"  # an ensemble of audits' fold trained nothing
        chose = json.loads(trained.read_text()) if trained.exists() else None
        print(
            f"  fold {fold}: {correct[rows].mean():.2%} of {rows.sum()} right out of fold "
            f"(Training {correct[rows & (on_disk == 'Training')].mean():.2%}, "
            f"Testing {correct[rows & (on_disk == 'Testing')].mean():.2%}); "
            + (
                f"validation chose epoch {chose['best_epoch']} ({chose['best_val_acc']:.2%})"
                if chose
                else f"the members' folds combined ({audit / f'fold{fold}' / MEMBERS})"
            )
        )
    part = manifest[scored].reset_index(drop=True)
    suspects, summary = audit_table(part, folds["fold"].to_numpy()[scored], probs[scored])
    for split in ("Training", "Testing"):
        print(f"  {split}: {summary[f'oof_accuracy_{split.lower()}']:.2%} of {(part['split_on_disk'] == split).sum()}")
    print(f"  all scored: {summary['oof_accuracy']:.2%} of {len(part)}")
    print(
        f"confident learning over the scored images: {summary['n_flagged']} flagged "
        f"(Training {summary['n_flagged_training']}, Testing {summary['n_flagged_testing']}; "
        f"{summary['n_flagged_in_duplicate_groups']} in duplicate groups): {summary['given_to_suggested']}"
    )
    if Path(args.earlier).exists():
        earlier = pd.read_csv(args.earlier)
        earlier = earlier[earlier["path"].isin(part["path"])]
        again = earlier["path"].isin(suspects["path"])
        print(f"the earlier list's flags among these images: {len(earlier)}, flagged again: {again.sum()}")
    if Path(args.verdicts).exists():
        verdicts = pd.read_csv(args.verdicts)
        position = pd.Index(manifest["path"]).get_indexer(verdicts["path"])
        among = (position >= 0) & scored[np.maximum(position, 0)]
        verdicts, rows = verdicts[among].copy(), position[among]
        verdicts["fold"] = folds["fold"].to_numpy()[rows]
        verdicts["p_given"] = probs[rows, labels[rows]].round(3)
        verdicts["answered"] = [CLASS_NAMES[i] for i in probs[rows].argmax(1)]
        verdicts["flagged"] = verdicts["path"].isin(suspects["path"])
        # the rank of p_given among the scored images of the same split and class, lowest first
        p_given = probs[np.arange(len(labels)), labels]
        verdicts["class_rank"] = [
            int((p_given[scored & (on_disk == on_disk[r]) & (labels == labels[r])] < p_given[r]).sum()) + 1
            for r in rows
        ]
        columns = ["path", "given", "verdict", "fold", "p_given", "answered", "flagged", "class_rank"]
        with pd.option_context("display.width", 200, "display.max_rows", 200):
            print(f"the reader's {len(verdicts)} images among the scored ones:")
            print(verdicts[columns].to_string(index=False))
            unread = suspects[~suspects["path"].isin(verdicts["path"])]
            print(f"flags the reader has not read: {len(unread)}")
            if len(unread):
                print(unread[["path", "given", "suggested", "p_given", "p_suggested"]].round(3).to_string(index=False))
    if Path(args.lesions).exists():
        lines = Path(args.lesions).read_text().splitlines()
        lesion_report(manifest, probs, scored, [line for line in lines if line and not line.startswith("#")])
    coverage_report(audit, folds, manifest, probs, done)
    if args.against:
        against_report(manifest, probs, scored, held_out_by_path(Path(args.against)), args.against)


if __name__ == "__main__":
    main()

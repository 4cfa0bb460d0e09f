"""The model card of a checkpoint, generated from files (never typed): the checkpoint (its training
settings, history, temperature, conformal thresholds), the evaluation run folder that scored it
(metrics.json with intervals, prediction sets and the shift suite; manifest.csv with the
duplicate audit) and, when given, a label-audit run folder (label_audit/label_audit.json).

    python -m brainlib model-card --checkpoint checkpoints/efficientnet_lite0_robust.pt \\
        --eval-run runs/eval-efficientnet_lite0_robust [--audit-run runs/label-audit] --out docs/MODEL_CARD.md

Sections follow Mitchell et al. 2019 (Model Cards for Model Reporting).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import write_text
from .checkpoint import load_checkpoint, weight_states
from .config import CLASS_NAMES, recipe_and_changes
from .data import read_manifest
from .errors import DataError
from .evaluate import interval_table, prediction_set_table
from .robustness import ShiftSummary, summary_of
from .shortcuts import folder_report
from .stats import interval_text
from .verdicts import AUDIT_SUMMARY, accuracy_both_ways, audit_root, counted, how_read, read_verdicts


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def _ci(metrics: dict, name: str) -> str:
    text = interval_text(metrics, name)
    return f" (95 % CI {text})" if text else ""


def _confusions(metrics: dict, top: int = 3) -> list[str]:
    cm = np.array(metrics["confusion_matrix"])
    off = [
        (int(cm[i, j]), CLASS_NAMES[i], CLASS_NAMES[j])
        for i in range(len(cm))
        for j in range(len(cm))
        if i != j and cm[i, j]
    ]
    return [
        f"{true} read as {pred}: {n} of {int(cm[CLASS_NAMES.index(true)].sum())}"
        for n, true, pred in sorted(off, reverse=True)[:top]
    ]


def _reproduce_flags(cfg: dict) -> str:
    """`prepare` flags for the checkpoint's recipe and what differs from it."""
    recipe, _, changes = recipe_and_changes(cfg).partition(" + ")
    flags = dict(c.split("=", 1) for c in changes.split())
    flags.setdefault("seed", cfg.get("seed", 42))  # always given, once: a recipe's default seed may change
    return f"--recipe {recipe}" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in flags.items())


def _near_rule(audit_file: Path) -> str:
    """How the evaluation run's duplicate audit defined a near twin (its audit.json)."""
    audit = json.loads(audit_file.read_text()) if audit_file.exists() else {}
    bits = audit.get("near_threshold_bits")
    within = f"within {bits} bits" if bits is not None else "within the run's threshold"
    turned = ", as stored, mirrored, upside down or turned half a turn" if "near_pairs_by_orientation" in audit else ""
    return f"256-bit dHash {within}{turned}"


def _duplicates(manifest: pd.DataFrame, n_calibration: int | None = None, near_rule: str = "") -> list[str]:
    test = manifest[manifest["split_on_disk"] == "Testing"]
    training = manifest[manifest["split_on_disk"] == "Training"]
    conflicts = manifest.loc[manifest["near_label_conflict"].astype(bool), "near_group"].nunique()
    n_val = int((manifest["split"] == "val").sum())
    return [
        f"{len(training):,} Training and {len(test):,} Testing images (the Kaggle dataset "
        "`masoudnickparvar/brain-tumor-mri-dataset`: glioma, meningioma, notumor, pituitary).",
        f"Duplicate audit (exact: same bytes or pixels; near: {near_rule}): "
        f"{int(test['has_train_twin_exact'].sum())} test images have an exact twin in Training and "
        f"{int(test['has_train_twin_near'].sum())} an exact or near one; {int(training['near_dup'].sum()):,} Training images "
        f"sit in near-duplicate groups (within Training or with Testing); {conflicts} groups carry more than one label.",
        "Validation is carved from Training (10 %, stratified, duplicate groups kept on one side); the test "
        "split is used for this report only. "
        + (
            f"The checkpoint was selected and calibrated on its own run's carve of {n_calibration} images, made from "
            f"a re-encoded copy of the data whose duplicate groups differ slightly ({n_val} on the original files)."
            if n_calibration and n_calibration != n_val
            else f"The checkpoint was selected and calibrated on its {n_val} images."
        ),
    ]


def _shift_flags(metrics: dict) -> str:
    summary = summary_of(metrics)
    if not summary:
        return " --shift-severities ''"
    flags = f" --shift-severities {','.join(map(str, summary.severities))}"
    if summary.n_images == metrics["n_test"]:
        return flags
    if "sample" in metrics["shifts"]:  # the size asked for; the stratified draw can give one or two more
        return flags + f" --shift-sample {metrics['shifts']['sample']}"
    return flags + f" --shift-sample N  # N not recorded in this metrics.json; it scored {summary.n_images} images"


def _audit_file(audit_run: str | Path | None) -> Path | None:
    """The audit's summary in a run folder's label_audit/, or directly in the folder given (docs/label_audit)."""
    path = audit_root(audit_run) / AUDIT_SUMMARY if audit_run else None
    return path if path and path.exists() else None


def build_model_card(
    checkpoint: str | Path,
    eval_run: str | Path,
    audit_run: str | Path | None = None,
    ood_report: str | Path | None = None,
) -> str:
    state = load_checkpoint(checkpoint)
    eval_run = Path(eval_run)
    if not (eval_run / "metrics.json").exists():
        raise DataError(f"{eval_run}/metrics.json not found: evaluate the checkpoint there first")
    metrics = json.loads((eval_run / "metrics.json").read_text())
    manifest = read_manifest(eval_run)
    cfg = state.get("config") or {}
    shifts = summary_of(metrics)
    lines = [
        f"# Model card: `{Path(checkpoint).name}`",
        "",
        f"*Generated by `python -m brainlib model-card` from `{checkpoint}` and `{eval_run}/`; do not edit by hand.*",
        "",
        "## Intended use",
        "",
        "Research and teaching: a reproducible baseline for classifying single 2-D brain MRI slices (as exported "
        "in this dataset: JPEG, mixed T1/T2/FLAIR, axial/coronal/sagittal) into glioma, meningioma, pituitary "
        "tumour or no tumour. **Not a diagnostic device**: it has not been validated on clinical data, sees one "
        "slice without the study or the patient's history, and must not inform any decision about a patient.",
        "",
    ]
    lines += _model_section(state)
    lines += [
        "",
        "## Training data",
        "",
        *[
            f"- {x}"
            for x in _duplicates(
                manifest, (state.get("conformal") or {}).get("n_calibration"), _near_rule(eval_run / "audit.json")
            )
        ],
        "",
    ]
    lines += [
        "## Metrics (official Testing split)",
        "",
        f"Accuracy {_pct(metrics['accuracy'])}{_ci(metrics, 'accuracy')} on {metrics['n_test']:,} images; "
        f"**leakage-free** (test images without any exact or near twin in Training, flipped copies included, "
        f"n = {metrics['n_leakage_free']}): "
        f"{_pct(metrics['accuracy_leakage_free'])}{_ci(metrics, 'accuracy_leakage_free')}. "
        f"Intervals: {metrics.get('intervals', {}).get('_method', 'not computed')}.",
        "",
        interval_table(metrics).to_markdown() if metrics.get("intervals") else "(no intervals in this metrics.json)",
        "",
        f"Calibration: ECE {_pct(metrics['ece'])}{_ci(metrics, 'ece')} raw, {_pct(metrics.get('ece_calibrated'))} after temperature "
        f"scaling (15 equal-width bins). Flip test-time augmentation: {_pct(metrics.get('accuracy_tta_flip'))}.",
        "",
    ]
    sets = prediction_set_table(metrics)
    if len(sets):
        lines += [
            "## Prediction sets",
            "",
            "Coverage (the true class is in the set) and mean set size; calibrated on validation, scored on test. "
            "`predict` prints the set and flags sets of more than one class as *uncertain: review*.",
            "",
            sets.round(4).to_markdown(),
            "",
        ]
    if shifts:
        lines += _shift_section(metrics, shifts)
    lines += _ood_section(state, metrics, Path(ood_report) if ood_report else eval_run / "ood" / "report.json")
    lines += _label_section(_audit_file(audit_run), eval_run)
    lines += [
        "## Known failure modes",
        "",
        *[f"- {x}." for x in _confusions(metrics)],
        *_file_shortcut(metrics.get("file_shortcut") or folder_report(eval_run)),
        "- Re-processed images (another scanner's export, resampling, contrast changes): see the shift table; the "
        "prediction sets' coverage guarantee does not hold there.",
        "- Images far smaller than the input size: `predict` warns below half of it.",
        "- One slice at a time: no volume, no sequence information, no other pathologies (the four classes are all it knows).",
        "",
        "## How to reproduce",
        "",
        "```",
        f"python -m brainlib prepare --run-dir runs/repro {_reproduce_flags(cfg)}",
        "make pipeline RUN=repro RECIPE=",
        f"python -m brainlib evaluate --checkpoint {checkpoint} --run-dir {eval_run}{_shift_flags(metrics)}",
        *(
            [f"python -m brainlib ood-report --checkpoint {checkpoint} --run-dir {eval_run}"]
            if state.get("ood")
            else []
        ),
        f"python -m brainlib model-card --checkpoint {checkpoint} --eval-run {eval_run}"
        + (f" --audit-run {audit_run}" if audit_run else "")
        + (f" --ood-report {ood_report}" if ood_report else "")
        + " --out docs/MODEL_CARD.md",
        "```",
        "",
    ]
    return "\n".join(lines)


def _model_section(state: dict) -> list[str]:
    cfg = state.get("config") or {}
    history = pd.DataFrame(state.get("history") or [])
    members = state.get("members") or []
    described = (
        [
            f"- Ensemble of {len(members)} (the mean of their log-probabilities"
            f"{', each also scoring the mirror image' if state.get('flip') else ''}), validation accuracy "
            f"{_pct(state.get('best_val_acc'))}; members: "
            + "; ".join(
                f"`{m['model_name']}` at {(m.get('config') or {}).get('image_size', '?')} px, recipe "
                f"`{recipe_and_changes(m.get('config') or {})}`, seed {(m.get('config') or {}).get('seed', '?')}, "
                f"epoch {m.get('epoch')}"
                for m in members
            )
            + "."
        ]
        if members
        else [
            f"- Architecture: `{state['model_name']}`, input {cfg.get('image_size', '?')} px (grayscale replicated to 3 channels)"
            + (f", scored at {cfg['test_image_size']} px" if cfg.get("test_image_size") else "")
            + ", "
            f"trained with recipe `{recipe_and_changes(cfg)}` for {cfg.get('epochs', '?')} epochs, seed {cfg.get('seed', '?')}; "
            f"the checkpoint is the epoch with the best validation accuracy (epoch {state.get('epoch')}, "
            f"validation accuracy {_pct(state.get('best_val_acc'))})."
        ]
    )
    lines = [
        "## Model",
        "",
        *described,
        *(
            ["- Weights stored as float16 (`python -m brainlib export --half`), upcast to float32 for scoring."]
            if any(v.dtype == torch.float16 for weights in weight_states(state) for v in weights.values())
            else []
        ),
        f"- Calibration: temperature {state.get('temperature', float('nan')):.3f} fitted on the validation logits of that epoch.",
    ]
    conformal = state.get("conformal")
    if conformal:
        lines.append(
            f"- Prediction sets: split conformal (LAC score), thresholds at α = {', '.join(conformal['thresholds'])} "
            f"from {conformal['n_calibration']} validation images."
        )
    if len(history):
        lines.append(
            f"- Training history kept in the checkpoint: epochs 1–{len(history)} (to the selected one), train accuracy "
            f"{_pct(history['train_acc'].iloc[-1])} at the last of them."
        )
    return lines


def _shift_section(metrics: dict, s: ShiftSummary) -> list[str]:
    table = pd.DataFrame(metrics["shifts"]["table"])
    table = table[table["shift"] != "clean"].sort_values("accuracy").head(5)
    cols = [
        "shift",
        "family",
        "severity",
        "param",
        "accuracy",
        "tumour_recall",
        *[c for c in table if c.startswith("recall_")],
        *[c for c in table if c.startswith("coverage_")],
    ]
    return [
        "## Behaviour under acquisition shift",
        "",
        f"The shift suite (`brainlib.shifts`: 25 re-processings in six families) at severities {s.severities} on "
        f"{s.n_images} test images: at the middle severity mean accuracy {_pct(s.middle_mean_accuracy)}, worst "
        f"{_pct(s.middle_worst_accuracy)} ({s.middle_worst_shift}), families seen in training "
        f"{_pct(s.middle_seen_accuracy)} vs held out {_pct(s.middle_held_out_accuracy)}, lowest tumour recall "
        f"{s.middle_min_tumour_recall:.3f}{_lowest_class_recall(s)}; over every severity run, mean "
        f"{_pct(s.mean_accuracy)} and worst {_pct(s.worst_accuracy)} (clean on the same images: {_pct(s.clean_accuracy)}).",
        "",
        "The five hardest shifts:",
        "",
        table[cols].round(4).to_markdown(index=False),
        "",
    ]


def _lowest_class_recall(s) -> str:
    if s.middle_min_class_recall is None:
        return ""
    return (
        f", lowest recall of one class {s.middle_min_class_recall:.3f} ({s.middle_min_class_recall_class} under "
        f"{s.middle_min_class_recall_shift})"
    )


def _ood_section(state: dict, metrics: dict, report: Path) -> list[str]:
    """The detector from the checkpoint; its false alarms and detections from metrics.json (evaluate)
    and, when present, an OOD report (`python -m brainlib ood-report` writes <run>/ood/report.json)."""
    lines = ["## Inputs it should not answer", ""]
    stats = state.get("ood")
    if not stats:
        return lines + ["This checkpoint has no out-of-distribution detector: it answers every input with a class.", ""]
    lines.append(
        f"An out-of-distribution detector (`{stats['score']}` score on the last convolutional block's pooled features, "
        f"fitted on {stats['n_fit']:,} Training images; threshold {stats['threshold']:.1f}, so that "
        f"{100 * stats['false_alarm_rate']:.0f} % of the {stats['n_threshold']} validation images are above it) makes "
        "`predict` decline inputs unlike the training images."
    )
    if metrics.get("ood"):
        lines.append(f"False alarms on the official test split: {_pct(metrics['ood']['test_false_alarm_rate'])}.")
    if report.exists():
        rows = pd.DataFrame(json.loads(report.read_text())["summary"])
        rows = rows[rows["score"] == stats["score"]]
        clean = rows[rows["family"] == "test_clean"]
        shifted = rows[rows["family"].str.startswith("shift:")]
        worst = shifted.loc[shifted["flagged"].idxmax()]
        lines.append(
            f"Measured by `python -m brainlib ood-report` (`{report}`): false alarms on the clean test split "
            f"{_pct(float(clean['flagged'].iloc[0]))}; on {int(worst['n'])} test images under each shift at the middle "
            f"severity {_pct(shifted['flagged'].mean())} on average, at most {_pct(worst['flagged'])} "
            f"({worst['family'].removeprefix('shift:')}). Non-MRI images (the score was chosen on the tuning families):"
        )
        outside = rows[~rows["group"].eq("in_distribution")]
        lines += [
            "",
            outside[["family", "group", "n", "flagged", "auroc_vs_clean_test"]].round(4).to_markdown(index=False),
        ]
    return lines + [""]


def _file_shortcut(report: dict | None) -> list[str]:
    """The dataset's file-format shortcut (brainlib.shortcuts), as this model meets it."""
    if report is None:
        return []
    conflicting, aligned, missed = report["conflicting"], report["aligned"], report["tumour_called_none"]
    rule = (
        "- The class follows the collection a file came from: a rule on the file's size alone tells tumour from no "
        f"tumour on the test split {_pct(report['rule_tumour_vs_none_accuracy'])} of the time"
    )
    if not conflicting["n"]:
        return [rule + "; no test image's file points the other way."]
    return [
        rule
        + f". On the {conflicting['n']} test images whose file points the other way this model scores {_pct(conflicting['accuracy'])} "
        f"[{_pct(conflicting['ci95'][0])}, {_pct(conflicting['ci95'][1])}] (the rest: {_pct(aligned['accuracy'])}) and calls "
        f'{missed["conflicting"]} of {missed["conflicting_n"]} such tumours "no tumour" '
        f"({missed['aligned']} of {missed['aligned_n']} of the others): `python -m brainlib shortcuts`, docs/trust.md."
        + _tumour_type_shortcut(report.get("tumour_type"))
    ]


def _tumour_type_shortcut(report: dict | None) -> str:
    if not report or not report["errors"]["conflicting_n"]:
        return ""
    errors = report["errors"]
    return (
        f" Inside the tumour classes the format names the type of {_pct(report['rule_accuracy'])} of the tumour test "
        f"images (the largest class alone: {_pct(report['largest_class_share'])}); this model gets the type wrong for "
        f"{errors['aligned']} of {errors['aligned_n']} whose format names their type and {errors['conflicting']} of "
        f"{errors['conflicting_n']} whose format names another, {errors['toward_file_type']} of them answering the "
        "file's type."
    )


def _label_section(audit_file: Path | None, eval_run: Path) -> list[str]:
    lines = ["## Label quality", ""]
    if not audit_file:
        return lines + ["No label audit was given to this card (`python -m brainlib audit-labels`).", ""]
    audit = json.loads(audit_file.read_text())
    pairs = ", ".join(f"{k}: {v}" for k, v in list(audit["given_to_suggested"].items())[:6])
    if audit.get("members"):  # an ensemble of audits over the same folds: one fold model of each per image
        folds = f"{audit['folds']} group-aware folds"
        members = f"; each image's probabilities the geometric mean of {len(audit['members'])} fold models: "
        members += "; ".join(_fold_models(m) for m in audit["members"])
    else:
        folds, members = f"{audit['folds']} group-aware folds, each {_fold_models(audit)}", ""
    scored_apart = audit.get("testing_scored_by", "the fold models") != "the fold models"
    scoring = (
        f"Training out of fold by {folds} ({_pct(audit['oof_accuracy_training'])} right), Testing by "
        f"`{audit['testing_scored_by']}`, trained on Training alone ({_pct(audit['oof_accuracy_testing'])} right)"
        if scored_apart
        else f"every image out of fold by {folds} ({_pct(audit['oof_accuracy'])} right){members}"
    )
    gallery = next((p.name for p in sorted(audit_file.parent.glob("suspects.*"))), None)
    verdicts_file = _verdicts_file(audit_file.parent)
    return lines + [
        f"Label audit ({scoring}): cleanlab flags {audit['n_flagged_training']} Training and "
        f"{audit['n_flagged_testing']} Testing images ({audit['n_flagged_in_duplicate_groups']} of them in duplicate "
        f"groups). Most frequent given -> suggested: {pairs}. A flag is only as good as the model behind it: where the "
        "out-of-fold accuracy is far below the checkpoint's, most flags are that model's own confusions. Labels were "
        f"not changed; the list is `{audit_file.parent / 'label_issues.csv'}`"
        + (f", the images `{audit_file.parent / gallery}`." if gallery else ".")
        + (
            f" {audit['n_copies_of_flags']} unflagged copies of flagged images carry the same label "
            f"({audit['n_copies_of_flags_testing']} in Testing; `{audit_file.parent / 'copies_of_flags.csv'}`)."
            if audit.get("n_copies_of_flags")
            else ""
        ),
        *_flags_read(audit_file.parent / "label_issues.csv", verdicts_file),
        "",
        *_both_ways(verdicts_file, eval_run / "predictions.csv"),
    ]


def _fold_models(audit: dict) -> str:
    """An audit's fold models in words: recipe, training side and epochs, the side they score at (and for a
    member of an ensemble of audits, its own out-of-fold accuracy)."""
    if "recipe" not in audit:  # a member without a summary
        return f"the fold models in `{audit['folder']}`"
    scoring_side = audit.get("scoring_size", audit["image_size"])  # an audit from before the side was recorded
    return (
        f"`{audit['recipe']}` at {audit['image_size']} px for "
        f"{audit['epochs_per_fold']} epoch{'s' if audit['epochs_per_fold'] != 1 else ''}"
        + (f" and scoring at {scoring_side} px" if scoring_side != audit["image_size"] else "")
        + (f" ({_pct(audit['oof_accuracy'])} right alone)" if "folder" in audit else "")
    )


def _verdicts_file(audit_dir: Path) -> Path:
    """The by-eye readings for an audit folder: its own verdicts.csv, else the nearest one above it (the
    audits under docs/label_audit/ share one file, each image read once whichever audit flagged it)."""
    for folder in (audit_dir, *audit_dir.parents[:2]):
        if (folder / "verdicts.csv").exists():
            return folder / "verdicts.csv"
    return audit_dir / "verdicts.csv"


def _flags_read(flags_file: Path, verdicts_file: Path) -> list[str]:
    """How the audit's flags read by eye: a flag a reader calls "model wrong" is the fold model's mistake."""
    if not (flags_file.exists() and verdicts_file.exists()):
        return []
    counts, n_read, n_flags = how_read(pd.read_csv(flags_file), read_verdicts(verdicts_file))
    return [f"Flags read by eye: {n_read} of {n_flags} ({counts})."] if n_read else []


def _both_ways(verdicts_file: Path, predictions_file: Path) -> list[str]:
    """The checkpoint's test accuracy with the labels a reader marked wrong read as the reader saw them."""
    if not (verdicts_file.exists() and predictions_file.exists()):
        return []
    verdicts = read_verdicts(verdicts_file)
    both = accuracy_both_ways(pd.read_csv(predictions_file), verdicts)
    return [
        f"By-eye readings (`{verdicts_file}`, not a radiologist's) of {len(verdicts)} images: "
        + counted(verdicts["verdict"], zeros=True)
        + f". With the {both['n_labels_read_as_wrong']} Testing label(s) read as wrong replaced by what the reader saw"
        + (
            f' and the {both["n_labels_wrong_class_unknown"]} "no tumour" images with a lesion of no class the reader '
            f"could tell left out (this checkpoint calls {both['class_unknown_given_label_predicted']} of them "
            '"no tumour")'
            if both["n_labels_wrong_class_unknown"]
            else ""
        )
        + f", this checkpoint makes {both['errors_relabelled']} errors in {both['n_images_relabelled']:,} "
        f"({_pct(both['accuracy_relabelled'])}) against {both['errors_official']} ({_pct(both['accuracy_official'])}) "
        "on the official labels, which every other number here uses.",
        "",
    ]


def write_model_card(text: str, out: str | Path) -> Path:
    return write_text(out, text)

"""The front door's numbers, generated from the committed metrics files (never typed): the results
table README.md shows between its `results-table` markers, and the robustness figure in docs/.

    python -m brainlib results-table --update README.md     # or: make readme-table
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .calibration import calibrated_probabilities, calibration_bins
from .cam import cam_panels
from .checkpoint import default_checkpoint, load_for_inference
from .config import CLASS_NAMES, DEFAULT_CHECKPOINT, REPO_ROOT, Config, read_run_config
from .data import open_image
from .errors import DataError
from .infer import predict_logits
from .loader import load_run_data, rows_batches
from .plots import confusion_matrices, image_grid, reliability_diagram, robustness_by_family
from .robustness import summary_of
from .shifts import SHIFTS
from .stats import interval_text
from .verdicts import accuracy_both_ways, fill_verdict_columns, how_read, read_verdicts, with_verdicts

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
# by-eye readings of images whose label a model contradicts, and what they change in the default's accuracy
VERDICTS_FILE = "docs/label_audit/verdicts.csv"
BOTH_WAYS_FILE = "docs/label_audit/default_both_ways.json"
# the label audit the front door cites: the strongest out of fold, the two committed audits' fold models
# combined (the 224-px recipe scoring at 272 px and the default's recipe at 320, the same five folds; 98.01 %
# right against 97.91 and 97.76 % alone); its summary and its list of flagged images (their verdicts from
# VERDICTS_FILE). The members stay in docs/label_audit/ and docs/label_audit/recipe_256/.
AUDIT_FILE = "docs/label_audit/ensemble/label_audit.json"
# committed checkpoint -> what it is; the metrics file sits beside it (<name>.metrics.json)
ROWS = {
    DEFAULT_CHECKPOINT: "**default**: EfficientNet-Lite0, acquisition augmentation, 256 px scored at 320",
    "checkpoints/efficientnet_lite0.pt": "EfficientNet-Lite0, same recipe without acquisition augmentation",
    "checkpoints/seed_cnn_robust.pt": "small CNN (273 k parameters), acquisition augmentation",
    "checkpoints/seed_cnn.pt": "small CNN, no augmentation, one-cycle",
}


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def metrics_of(checkpoint: str) -> dict:
    path = REPO_ROOT / Path(checkpoint).with_suffix(".metrics.json")
    if not path.exists():
        raise DataError(f"{path} not found: the committed metrics of {checkpoint}")
    return json.loads(path.read_text())


def results_table() -> str:
    """One row per committed checkpoint (markdown), from its metrics file."""
    rows = []
    for checkpoint, what in ROWS.items():
        m = metrics_of(checkpoint)
        s = summary_of(m)
        sets = ((m.get("conformal") or {}).get("sets") or {}).get("0.01", {}).get("test") or {}
        on = "" if not s else f" ({s.n_images:,} images)"
        rows.append(
            {
                "model": f"{what} (`{Path(checkpoint).name}`)",
                "official test [95 % CI]": f"{_pct(m['accuracy'])} {interval_text(m, 'accuracy')}",
                f"leakage-free (n = {m['n_leakage_free']})": f"{_pct(m['accuracy_leakage_free'])} {interval_text(m, 'accuracy_leakage_free')}",
                "25 shifts, middle severity: mean / worst": f"{_pct(s.middle_mean_accuracy)} / {_pct(s.middle_worst_accuracy)}{on}"
                if s
                else "",
                "lowest recall under shift: tumour / one class": _lowest_recalls(s),
                "99 % sets: coverage / size": f"{sets['coverage']:.3f} / {sets['mean_set_size']:.2f}" if sets else "",
                "ECE calibrated": _pct(m.get("ece_calibrated")),
            }
        )
    table = pd.DataFrame(rows).to_markdown(index=False)
    both = REPO_ROOT / BOTH_WAYS_FILE
    if not both.exists():
        return table
    b = json.loads(both.read_text())
    n, unknown = b["n_labels_read_as_wrong"], b.get("n_labels_wrong_class_unknown", 0)
    lesions = (
        f' {unknown} "no tumour" images show an obvious lesion whose type one slice cannot tell; the default calls '
        f'{_how_many(b["class_unknown_given_label_predicted"], unknown)} "no tumour", and they leave the relabelled count '
        f"({b['n_images_relabelled']:,} images)."
        if unknown
        else ""
    )
    return (
        f"{table}\n\nOn the official labels the default makes {b['errors_official']} errors of {b['n_images']:,}. "
        f"A reader (by eye, not a radiologist: [{VERDICTS_FILE}]({VERDICTS_FILE})) marked {n} Testing "
        f"label{'s' if n != 1 else ''} wrong; read as the reader saw {'them' if n != 1 else 'it'}, the default makes "
        f"{b['errors_relabelled']} errors ({_pct(b['accuracy_relabelled'])}).{lesions} Every other accuracy here uses "
        f"the official labels.{_audit_sentence()}"
    )


def _lowest_recalls(s) -> str:
    """The share of tumours still called a tumour, and the recall of the class a shift takes down most (a shift
    can cost one class far more than the mean shows), at the middle severity."""
    if not s:
        return ""
    one_class = (
        f" / {s.middle_min_class_recall:.3f} ({s.middle_min_class_recall_class})"
        if s.middle_min_class_recall is not None
        else ""
    )
    return f"{s.middle_min_tumour_recall:.3f}{one_class}"


def _audit_sentence() -> str:
    """The committed label audit in one sentence: how strong its models are, how many images it flags, and
    how the flags read by eye."""
    audit_file = REPO_ROOT / AUDIT_FILE
    flags_file, verdicts_file = audit_file.parent / "label_issues.csv", REPO_ROOT / VERDICTS_FILE
    if not (audit_file.exists() and flags_file.exists() and verdicts_file.exists()):
        return ""
    audit = json.loads(audit_file.read_text())
    read, n_read, n_flags = how_read(pd.read_csv(flags_file), read_verdicts(verdicts_file))
    unread = n_flags - n_read
    members = audit.get("members")  # an ensemble of audits: each image scored by one fold model of each
    if members:
        recipes = [f"`{m.get('recipe', m['folder'])}`" for m in members]
        scored_by = (
            f"{len(members)} fold models that never saw any copy of it, one each of {', '.join(recipes[:-1])} and "
            f"{recipes[-1]} ({audit['folds']} folds each), their probabilities' geometric mean "
        )
    else:
        scored_by = f"one of {audit['folds']} models of `{audit['recipe']}` that never saw any copy of it, "
    return (
        f" A label audit (each of the {audit['n_images']:,} images of Training and Testing scored by {scored_by}"
        f"{_pct(audit['oof_accuracy'])} right) flags "
        f"{audit['n_flagged']} ({audit['n_flagged_testing']} in Testing); read by eye: {read}"
        f"{f', {unread} not read' if unread else ''} "
        "([docs/trust.md](docs/trust.md#are-the-labels-right))."
    )


def _how_many(k: int, n: int) -> str:
    return "every one of them" if k == n else f"{k} of them"


# the robustness figure: the default against the same model trained without acquisition augmentation,
# whose severities 1 and 3 were scored apart (docs/robustness/) on the same 401-image sample as severity 2
FIGURE_MODELS = {
    "efficientnet_lite0_robust.pt (default, 1,311 images)": [DEFAULT_CHECKPOINT],
    "efficientnet_lite0.pt, no acquisition augmentation (401 images)": [
        "checkpoints/efficientnet_lite0.pt",
        "docs/robustness/efficientnet_lite0.severities_1_3.pt",
    ],
}


def robustness_figure(out: str | Path = "docs/figures/robustness_by_family.png") -> Path:
    """Accuracy by shift family and severity, from the committed metrics files' shift tables."""
    tables = {}
    for label, files in FIGURE_MODELS.items():
        parts = [pd.DataFrame(metrics_of(f)["shifts"]["table"]) for f in files]
        table = pd.concat(parts, ignore_index=True)
        tables[label] = table[(table["shift"] != "clean") | ~table.duplicated("shift")]
    robustness_by_family(
        tables, "EfficientNet-Lite0 under the shift suite, by family (official Testing split)", REPO_ROOT / out
    )
    return Path(out)


def error_table(eval_run: str | Path) -> pd.DataFrame:
    """Every test error of an evaluated checkpoint: file, given label, prediction, its calibrated
    probability, the probability of the given label, and whether the file has a twin in Training
    (exact: same pixels; near: same image re-encoded or resized)."""
    eval_run = Path(eval_run)
    metrics = json.loads((eval_run / "metrics.json").read_text())
    pred = pd.read_csv(eval_run / "predictions.csv")
    probs = calibrated_probabilities(np.load(eval_run / "test_logits.npy"), metrics["temperature"])
    wrong = np.flatnonzero(pred["label_idx"].to_numpy() != pred["pred_idx"].to_numpy())
    twin = np.where(pred["has_train_twin_exact"], "exact", np.where(pred["has_train_twin_near"], "near", "none"))
    table = pd.DataFrame(
        {
            "path": pred["path"].to_numpy()[wrong],
            "label": pred["label"].to_numpy()[wrong],
            "pred": pred["pred"].to_numpy()[wrong],
            "p_pred": probs[wrong, pred["pred_idx"].to_numpy()[wrong]].round(3),
            "p_label": probs[wrong, pred["label_idx"].to_numpy()[wrong]].round(3),
            "train_twin": twin[wrong],
        }
    )
    return table.sort_values("p_pred", ascending=False).reset_index(drop=True)


def error_gallery(eval_run: str | Path, data_root: str | Path, save_to: str | Path, title: str = "") -> pd.DataFrame:
    """All test errors in one figure, each tile named by its file so a reader can find it, with the
    given label, the prediction and its probability, and the Training twin if any; the originals,
    not the 256-px cache."""
    table = error_table(eval_run)
    images = [np.asarray(open_image(Path(data_root) / p).convert("L")) for p in table["path"]]
    titles = [
        f"{Path(r.path).name}\ngiven {r.label}\npred {r.pred} {r.p_pred:.2f}"
        + (f"\ntwin in Training: {r.train_twin}" if r.train_twin != "none" else "")
        for r in table.itertuples()
    ]
    image_grid(images, titles, ncols=6, save_to=save_to, size=3.0, title=title)
    return table


def default_figures(eval_run: str | Path, out_dir: str | Path = "docs/figures") -> list[Path]:
    """Figures of the default checkpoint, each titled with its name, from its evaluation folder
    (predictions.csv, test_logits.npy, metrics.json, the run's data): confusion matrix, reliability
    diagram, one test image under every shift with the prediction, Grad-CAM on right and wrong answers."""
    eval_run, out_dir = Path(eval_run), REPO_ROOT / out_dir
    name = Path(DEFAULT_CHECKPOINT).name
    metrics = json.loads((eval_run / "metrics.json").read_text())
    pred = pd.read_csv(eval_run / "predictions.csv")
    logits = np.load(eval_run / "test_logits.npy")
    written = [
        out_dir / f
        for f in (
            "default_confusion_matrix.png",
            "default_reliability.png",
            "default_shift_examples.png",
            "default_gradcam.png",
        )
    ]
    confusion_matrices(np.array(metrics["confusion_matrix"]), written[0], f"{name}: official Testing split")
    correct = (pred["label_idx"] == pred["pred_idx"]).to_numpy()
    bins = calibration_bins(calibrated_probabilities(logits, metrics["temperature"]).max(1), correct)
    reliability_diagram(bins, metrics["ece_calibrated"], f"{name}, T={metrics['temperature']:.2f}", written[1])
    net = load_for_inference(default_checkpoint())
    cfg = net.scoring_config(Config.from_dict(read_run_config(eval_run)).replace(run_dir=str(eval_run)))
    data = load_run_data(cfg)
    test_rows = data.rows("test")
    row = test_rows[int(np.flatnonzero(pred["label"].to_numpy() == "glioma")[0])]
    clean = np.asarray(data.images[[row]])
    shifted = [clean] + [shift(clean, 2) for shift in SHIFTS.values()]
    stack = np.concatenate(shifted)
    probs = calibrated_probabilities(
        predict_logits(net.model, rows_batches(cfg, data, np.repeat(row, len(stack)), images=stack), "cpu").numpy(),
        net.temperature,
    )
    titles = [
        f"{label}\n{CLASS_NAMES[int(p.argmax())]} {p.max():.2f}"
        for label, p in zip(["clean (glioma)"] + [s.name for s in SHIFTS.values()], probs, strict=True)
    ]
    image_grid(
        list(stack),
        titles,
        ncols=6,
        save_to=written[2],
        size=1.9,
        title=f"{name}: one glioma test image under every shift (severity 2)",
    )
    right = pred[correct].groupby("label").head(1)
    wrong = pred[~correct].sort_values("confidence", ascending=False).head(2)
    picked = pd.concat([right, wrong])
    x, _ = rows_batches(cfg, data, test_rows[picked.index]).batch(range(len(picked)))
    labels = [
        f"true {t}\npred {p} ({c:.2f})"
        for t, p, c in zip(picked["label"], picked["pred"], picked["confidence"], strict=True)
    ]
    images, names = cam_panels(net, x, picked["pred_idx"].tolist(), labels)
    image_grid(
        images,
        names,
        ncols=6,
        save_to=written[3],
        size=1.9,
        title=f"{name}: Grad-CAM, four right answers and the two most confident errors",
    )
    errors = out_dir / "default_errors.png"
    table = error_gallery(
        eval_run, data.data_root, errors, f"{name}: every error on the official Testing split ({len(pred):,} images)"
    )
    written += [errors, out_dir / "default_errors.csv"]
    verdicts_file = REPO_ROOT / VERDICTS_FILE
    if verdicts_file.exists():
        verdicts = read_verdicts(verdicts_file)
        table = with_verdicts(table, verdicts)
        both = accuracy_both_ways(pred, verdicts) | {"checkpoint": name, "verdicts": VERDICTS_FILE}
        written.append(write_text(REPO_ROOT / BOTH_WAYS_FILE, json.dumps(both, indent=2) + "\n"))
        # the committed audits' lists, their verdict column filled from the same readings
        written += fill_verdict_columns(verdicts_file.parent, verdicts)
    with atomic_path(out_dir / "default_errors.csv") as tmp:
        table.to_csv(tmp, index=False)
    return [p.relative_to(REPO_ROOT) for p in written]


def replace_block(text: str, block: str) -> str:
    if START not in text or END not in text:
        raise DataError(f"the file has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def update(path: str | Path) -> Path:
    """Write the current table into the file's results-table block."""
    path = Path(path)
    return write_text(path, replace_block(path.read_text(), results_table()))

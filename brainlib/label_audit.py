"""Label-quality audit: out-of-fold probabilities for every image, then confident learning.

Every image of Training and Testing (pooled) is scored by a model that never saw it: k folds,
stratified by class, with each near-duplicate group (which holds the exact ones) inside one fold,
so a twin in the other folds cannot teach the model the same wrong label. Each fold trains the
run's recipe through the one training loop (brainlib.train) with validation carved from its own
training folds, and scores its held-out fold with the selected epoch's calibrated probabilities, at the
recipe's scoring side (test_image_size; finished folds are scored again by their models when it changes).
cleanlab's confident learning (Northcutt et al. 2021) then ranks the images whose given label the
out-of-fold model contradicts with more confidence than its per-class thresholds allow.

Or Training in folds and Testing scored separately (`test_checkpoint`): by a checkpoint trained on
Training alone, such as the committed default, which never saw a Testing image. On a CPU that is
the strong half of the audit: the k fine-tunes there are short and their models weak.

The official labels are never changed: the suspects are a list for a person to look at, and the
Testing suspects are reported on their own; what a person concludes looking at them is brainlib.verdicts.

Or the fold models of several finished audits over the same folds as one (`members`): each image's
probabilities are the normalised geometric mean of the members' held-out probabilities (the mean of their
log-probabilities, the rule of the ensemble checkpoint kind, models.Ensemble), so two recipes' fold models
audit together without training anything; every member fold must hold exactly the images of this run's fold.

Files under <run>/label_audit/: fold<k>/ (each fold's training run and held-out probabilities with
the list of files, side and calibration they belong to, so an interrupted audit resumes at the fold it
was in, and a finished fold copied into another run folder is reused only for the same images),
folds.csv, oof_probs.npy, label_issues.csv (ranked suspects), review.csv (the images each class's
out-of-fold model doubts most that are not suspects), copies_of_flags.csv (the unflagged copies of the
suspects, same label), label_audit.json (summary), suspects.png and
testing_suspects.png (galleries: all suspects, Testing's alone).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path, save_npy, write_text
from .calibration import calibrate, calibration_of
from .checkpoint import InferenceModel, best_checkpoint, load_checkpoint, load_for_inference, scored_at
from .config import CLASS_NAMES, Config
from .data import assign_splits
from .errors import SettingsError
from .infer import predict_logits, setup_torch
from .loader import RunData, rows_batches
from .plots import image_grid
from .train import train
from .verdicts import AUDIT_DIR, AUDIT_SUMMARY, audit_root

# the side a fold's held_out_probs.npy were scored at, with the temperature and conformal thresholds fitted there
HELD_OUT_CALIBRATION = "held_out_calibration.json"
DEFAULT_FOLDS = 5


def held_out_thresholds(fold_dir: Path) -> dict:
    """The conformal thresholds (by alpha) that go with a fold's stored held-out probabilities: those fitted at
    the side they were scored at (recorded when a fold is scored at another side than its model's), else the
    fold model's own."""
    recorded = Path(fold_dir) / HELD_OUT_CALIBRATION
    if recorded.exists():
        return json.loads(recorded.read_text())["conformal"]["thresholds"]
    return load_checkpoint(best_checkpoint(fold_dir))["conformal"]["thresholds"]


def assign_folds(manifest: pd.DataFrame, k: int, seed: int, group_column: str = "near_group") -> np.ndarray:
    """Fold id (0..k-1) per manifest row: stratified by class, duplicate groups never split."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups_per_class = manifest.groupby("label_idx")[group_column].nunique()
    if groups_per_class.min() < k:  # sklearn would stop with a traceback, or leave a fold without that class
        raise SettingsError(
            f"{k} folds need at least {k} separate images (duplicate groups) of every class; "
            f"{CLASS_NAMES[groups_per_class.idxmin()]} has {groups_per_class.min()} in this run: use fewer folds"
        )
    folds = np.full(len(manifest), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(
        splitter.split(np.zeros(len(manifest)), manifest["label_idx"], manifest[group_column])
    ):
        folds[held_out] = fold
    return folds


def fold_run_data(data: RunData, folds: np.ndarray, fold: int, val_fraction: float, seed: int) -> RunData:
    """The run's images with splits for one fold: the held-out fold is `test`; the other folds are
    `train` with a group-aware, stratified `val` carved from them (data.assign_splits); rows in no
    fold (-1) are `unused`."""
    manifest = data.manifest.copy()
    manifest["split_on_disk"] = np.where(folds == fold, "Testing", "Training")
    split = assign_splits(manifest, val_fraction, seed)
    split.loc[folds < 0, "split"] = "unused"
    return RunData(split, data.images, data.data_root)


def _loaded(checkpoint: str | Path, cfg: Config, device: str) -> InferenceModel:
    net = load_for_inference(checkpoint, device)
    if net.cache_size != cfg.cache_size:
        raise SettingsError(f"{checkpoint} reads {net.cache_size}-px images; this run caches {cfg.cache_size} px")
    return net


def _calibrated_probabilities(
    checkpoint: str | Path, cfg: Config, data: RunData, rows: np.ndarray, device: str
) -> np.ndarray:
    """Temperature-scaled class probabilities of `rows` from a checkpoint, at the side it scores at,
    through the one inference path (fold models and the Testing checkpoint alike)."""
    net = _loaded(checkpoint, cfg, device)
    batches = rows_batches(net.scoring_config(cfg), data, rows, device)
    return calibrate(predict_logits(net.model, batches, device), net.temperature).numpy()


def out_of_fold_probabilities(
    cfg: Config, data: RunData, k: int = DEFAULT_FOLDS, progress: bool = True, test_checkpoint: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(folds, probabilities): every image's calibrated class probabilities from a model that did
    not train on it: the fold models, or for Testing (fold -1) `test_checkpoint` when given. A fold
    whose probabilities are on disk is not trained again, and a fold interrupted mid-training
    resumes from its last checkpoint."""
    root = Path(cfg.run_dir) / AUDIT_DIR
    root.mkdir(parents=True, exist_ok=True)
    testing = (data.manifest["split_on_disk"] == "Testing").to_numpy()
    if test_checkpoint:
        folds = np.full(len(testing), -1)
        folds[~testing] = assign_folds(data.manifest[~testing], k, cfg.seed)
    else:
        folds = assign_folds(data.manifest, k, cfg.seed)
    with atomic_path(root / "folds.csv") as tmp:
        pd.DataFrame({"path": data.manifest["path"], "fold": folds}).to_csv(tmp, index=False)
    probs = np.full((len(folds), len(CLASS_NAMES)), np.nan)
    device = setup_torch(cfg)
    for fold in range(k):
        fold_dir = root / f"fold{fold}"
        done = fold_dir / "held_out_probs.npy"
        listed = fold_dir / "held_out_paths.txt"
        held_out_rows = folds == fold
        held_out_paths = data.manifest["path"].to_numpy()[held_out_rows].tolist()
        if done.exists():
            _check_held_out(done, listed, held_out_paths)
        if not done.exists() or held_out_side(fold_dir, cfg) != cfg.scoring_size:  # else reused as it is
            fold_cfg = cfg.replace(run_dir=str(fold_dir))
            fold_data = fold_run_data(data, folds, fold, cfg.val_fraction, cfg.seed)
            if not done.exists():
                if progress:
                    print(
                        f"label audit: fold {fold + 1}/{k}: train on {len(fold_data.rows('train'))}, score {len(fold_data.rows('test'))}"
                    )
                train(fold_cfg, resume=True, progress=progress, data=fold_data)
            held_out, calibration = _fold_probabilities(fold_dir, fold_cfg, fold_data, device)
            write_text(listed, "\n".join(held_out_paths) + "\n")
            save_npy(held_out, done)
            write_text(fold_dir / HELD_OUT_CALIBRATION, json.dumps(calibration, indent=2) + "\n")
        probs[held_out_rows] = np.load(done)
        if progress:  # each fold's score as it lands: an audit stopped early still says how strong its models are
            right = probs[held_out_rows].argmax(1) == data.manifest["label_idx"].to_numpy()[held_out_rows]
            print(f"label audit: fold {fold + 1}/{k}: {right.mean():.2%} of {right.size} held-out images right")
    if test_checkpoint:  # trained on Training alone: the caller's word
        probs[testing] = _calibrated_probabilities(test_checkpoint, cfg, data, np.flatnonzero(testing), device)
    save_npy(probs, root / "oof_probs.npy")
    return folds, probs


MEMBERS = "members.json"  # an ensemble audit's fold: the member folds its probabilities combine


def member_fold(member: str | Path, fold: int) -> Path:
    """A finished fold of a member audit, or one SettingsError that names what is missing."""
    fold_dir = audit_root(member) / f"fold{fold}"
    if not (fold_dir / "held_out_probs.npy").exists():
        raise SettingsError(f"{member} holds no finished fold {fold} ({fold_dir}/held_out_probs.npy)")
    return fold_dir


def member_summary(member: str | Path) -> dict:
    """What a member audit was (recipe, sides, epochs, its own out-of-fold accuracy), from its summary
    where it has one: an ensemble's summary carries its members' so that a reader need not open them."""
    summary_file = audit_root(member) / AUDIT_SUMMARY
    record = {"folder": str(member)}
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        fields = ("recipe", "model", "image_size", "epochs_per_fold", "scoring_size", "oof_accuracy")
        record |= {field: summary[field] for field in fields if field in summary}
    return record


def ensemble_of_folds(cfg: Config, data: RunData, k: int, members: list[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """(folds, probabilities): the members' out-of-fold probabilities, image by image, combined as the
    ensemble kind combines models (normalised geometric mean). Nothing trains: each member's fold must be
    finished and hold this run's fold of images (same data, seed and fold count), else one SettingsError."""
    if len(members) < 2:
        raise SettingsError(f"an ensemble of audits needs at least two members, not {len(members)}")
    folds = assign_folds(data.manifest, k, cfg.seed)
    probs = np.full((len(folds), len(CLASS_NAMES)), np.nan)
    records = []
    for fold in range(k):  # every member fold read and checked before anything is written
        held_out_rows = folds == fold
        held_out_paths = data.manifest["path"].to_numpy()[held_out_rows].tolist()
        log_probs, record = [], []
        for member in members:
            fold_dir = member_fold(member, fold)
            try:
                member_probs = held_out_of_fold(fold_dir, held_out_paths)
            except SettingsError:
                raise SettingsError(
                    f"{fold_dir} holds other images than this run's fold {fold} ({len(held_out_paths)} images): "
                    f"a member must audit the same data with the same --seed ({cfg.seed}) and --folds ({k})"
                ) from None
            log_probs.append(np.log(np.clip(member_probs, 1e-12, None)))
            record.append({"fold": str(fold_dir), "scoring_size": _stored_side(fold_dir)})
        combined = np.exp(np.mean(log_probs, axis=0))
        # stored in float32 as a fold model's are: the audit's list follows from the committed fold files
        probs[held_out_rows] = (combined / combined.sum(1, keepdims=True)).astype(np.float32)
        records.append((held_out_paths, record))
    root = Path(cfg.run_dir) / AUDIT_DIR
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / "folds.csv") as tmp:
        pd.DataFrame({"path": data.manifest["path"], "fold": folds}).to_csv(tmp, index=False)
    for fold, (held_out_paths, record) in enumerate(records):
        fold_dir = root / f"fold{fold}"
        write_text(fold_dir / "held_out_paths.txt", "\n".join(held_out_paths) + "\n")
        save_npy(probs[folds == fold].astype(np.float32), fold_dir / "held_out_probs.npy")
        write_text(fold_dir / MEMBERS, json.dumps(record, indent=2) + "\n")
    save_npy(probs, root / "oof_probs.npy")
    return folds, probs


def _stored_side(fold_dir: Path) -> int | None:
    """The side a finished fold's probabilities were scored at, where the fold records it."""
    recorded = Path(fold_dir) / HELD_OUT_CALIBRATION
    return int(json.loads(recorded.read_text())["scoring_size"]) if recorded.exists() else None


def held_out_side(fold_dir: Path, cfg: Config) -> int:
    """The side a fold's stored probabilities were scored at (a fold from before the side was recorded
    scored at the side it trained at, the run's image_size)."""
    stored = _stored_side(fold_dir)
    return cfg.image_size if stored is None else stored


def _fold_probabilities(fold_dir: Path, fold_cfg: Config, fold_data: RunData, device: str) -> tuple[np.ndarray, dict]:
    """(a fold model's calibrated probabilities of its held-out images at the run's scoring side, the side
    with the temperature and conformal thresholds they go with). A fold model that scores at another side
    (trained before its recipe scored at a larger one) is scored through a copy that scores at the run's
    side, its calibration fitted again there on the fold's own validation images
    (calibration.calibration_of checks they are the ones that selected it)."""
    best, size = best_checkpoint(fold_dir), fold_cfg.scoring_size
    if not best.exists():
        stored = held_out_side(fold_dir, fold_cfg)
        raise SettingsError(
            f"{fold_dir} holds probabilities scored at {stored} px, this audit scores at {size} px, and the "
            f"fold's model ({best}) is not here to score them again: delete {fold_dir} to train the fold "
            f"again, or give --test-image-size {stored}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        # at the model's own side the copy keeps its calibration; at another it is fitted again below
        net = _loaded(scored_at(best, size, Path(tmp) / "s.pt"), fold_cfg, device)
        calibration = calibration_of(net, net.scoring_config(fold_cfg), fold_data, device)
        rows = fold_data.rows("test")
        logits = predict_logits(net.model, rows_batches(net.scoring_config(fold_cfg), fold_data, rows, device), device)
    record = {"scoring_size": size, "temperature": calibration["temperature"], "conformal": calibration["conformal"]}
    return calibrate(logits, record["temperature"]).numpy(), record


def read_held_out(fold_dir: Path) -> tuple[list[str], np.ndarray]:
    """A finished fold's held-out image paths and probabilities as the audit stores them (also in a committed
    copy of its folds), checked to be as many: otherwise one image's probabilities would sit on another's row."""
    paths = (Path(fold_dir) / "held_out_paths.txt").read_text().splitlines()
    probs = np.load(Path(fold_dir) / "held_out_probs.npy")
    if len(probs) != len(paths):
        raise SettingsError(f"{fold_dir} holds {len(probs)} rows for {len(paths)} listed images")
    return paths, probs


def held_out_of_fold(fold_dir: Path, fold_paths: list[str]) -> np.ndarray:
    """A finished fold's held-out probabilities, one row per image of `fold_paths` in that order, for a
    reader of an audit's folds (a script, a test): the stored list must be exactly those images and the
    probabilities as many, else a SettingsError names the folder."""
    stored = Path(fold_dir) / "held_out_probs.npy"
    _check_held_out(stored, stored.parent / "held_out_paths.txt", fold_paths)
    probs = np.load(stored)
    if len(probs) != len(fold_paths):
        raise SettingsError(f"{fold_dir} holds {len(probs)} rows for {len(fold_paths)} listed images")
    return probs


def _check_held_out(done: Path, listed: Path, held_out_paths: list[str]) -> None:
    """A fold's stored probabilities are reused only for the images they were computed on: a fold
    folder copied from another audit, or the same seed over another copy of the data, would otherwise
    put one image's probabilities on another's row without a word."""
    same = (
        listed.read_text().splitlines() == held_out_paths
        if listed.exists()
        else len(np.load(done)) == len(held_out_paths)  # an audit from before the list was written
    )
    if not same:
        raise SettingsError(
            f"{done} holds probabilities of other images than this fold's {len(held_out_paths)} "
            f"(another copy of the data, seed or fold count); delete {done.parent} to score the fold again"
        )


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged row positions, worst first; label quality score per row) from cleanlab's
    confident learning on out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, int)
    flagged = cleanlab_find(labels, probs, return_indices_ranked_by="self_confidence")
    return np.asarray(flagged, int), get_label_quality_scores(labels, probs)


def _rows_table(manifest: pd.DataFrame, folds: np.ndarray, probs: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """The given rows as the lists show them: path, split on disk, given and suggested class and their
    out-of-fold probabilities, duplicate-group membership, fold, an empty verdict column."""
    labels = manifest["label_idx"].to_numpy()[rows]
    suggested = probs[rows].argmax(1)
    in_group = (manifest["exact_dup"].astype(bool) | manifest["near_dup"].astype(bool)).to_numpy()
    return pd.DataFrame(
        {
            "path": manifest["path"].to_numpy()[rows],
            "split_on_disk": manifest["split_on_disk"].to_numpy()[rows],
            "given": [CLASS_NAMES[i] for i in labels],
            "suggested": [CLASS_NAMES[i] for i in suggested],
            "p_given": probs[rows, labels],
            "p_suggested": probs[rows, suggested],
            "in_duplicate_group": in_group[rows],
            "fold": folds[rows],
            "verdict": "",  # a reader's, filled from their readings (brainlib.verdicts.with_verdicts)
        }
    )


def suspects_table(manifest: pd.DataFrame, folds: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The ranked suspects (path, split on disk, given and suggested class, their out-of-fold
    probabilities, label quality, duplicate-group membership) among the manifest's images."""
    flagged, quality = find_label_issues(manifest["label_idx"].to_numpy(), probs)
    table = _rows_table(manifest, folds, probs, flagged)
    table.insert(0, "rank", np.arange(1, len(flagged) + 1))
    table.insert(table.columns.get_loc("p_suggested") + 1, "label_quality", quality[flagged])
    return table


# Confident learning flags an image only when another class is confidently above its threshold. The nine
# Testing "no tumour" images with an obvious lesion (docs/trust.md) were not flagged by any audit, the
# fold models being unsure rather than sure of a tumour type, yet they ranked low: among the 43 lowest of the
# 405 Testing "no tumour" images in the 3-epoch audit, ranks 9-60 in the 10-epoch one at 224 px (7 of the nine
# in its review list), 6-29 at 272 px (all nine). So the lowest of each class are worth reading too; 40 was
# set before the second audit.
REVIEW_PER_CLASS = 40


def review_table(
    manifest: pd.DataFrame,
    folds: np.ndarray,
    probs: np.ndarray,
    suspects: pd.DataFrame,
    per_class: int = REVIEW_PER_CLASS,
) -> pd.DataFrame:
    """For Training and Testing apart and each given class, the `per_class` images with the lowest
    out-of-fold probability of their given label that are not among the suspects, lowest first
    (`class_rank` counts within the split and class, flagged images included)."""
    labels = manifest["label_idx"].to_numpy()
    p_given = probs[np.arange(len(labels)), labels]
    flagged = manifest["path"].isin(suspects["path"]).to_numpy()
    on_disk = manifest["split_on_disk"].to_numpy()
    chosen, class_ranks = [], []
    for split in dict.fromkeys(on_disk):
        for label in range(len(CLASS_NAMES)):
            rows = np.flatnonzero((on_disk == split) & (labels == label))
            rows = rows[np.argsort(p_given[rows], kind="stable")]
            unflagged = np.flatnonzero(~flagged[rows])[:per_class]  # positions in the class's ranking
            chosen.append(rows[unflagged])
            class_ranks.append(unflagged + 1)
    table = _rows_table(manifest, folds, probs, np.concatenate(chosen) if chosen else np.zeros(0, int))
    table.insert(0, "class_rank", np.concatenate(class_ranks) if class_ranks else np.zeros(0, int))
    return table


def copies_table(manifest: pd.DataFrame, folds: np.ndarray, probs: np.ndarray, suspects: pd.DataFrame) -> pd.DataFrame:
    """The unflagged images that share a suspect's duplicate group (exact, near, mirrored or upside-down copies,
    `near_group`) and its given label, each with `copy_of`, the best-ranked suspect of its group. A label
    belongs to the slice, not the file: the dataset stores one slice up to 17 times, and confident learning
    may flag some copies and not others (the committed audit flags five Training copies of a "no tumour"
    slice with two enhancing nodules, and none of its three Testing copies)."""
    groups = manifest["near_group"].to_numpy()
    labels = manifest["label_idx"].to_numpy()
    flagged = manifest["path"].isin(suspects["path"]).to_numpy()
    position = pd.Index(manifest["path"])
    rows, copy_of = [], []
    for path in suspects["path"]:  # best-ranked first: a copy is listed under the first suspect of its group
        i = position.get_loc(path)
        members = np.flatnonzero((groups == groups[i]) & (labels == labels[i]) & ~flagged)
        new = [m for m in members if m not in rows]
        rows += new
        copy_of += [path] * len(new)
    table = _rows_table(manifest, folds, probs, np.array(rows, int))
    table.insert(1, "copy_of", copy_of)
    return table


def summarize(manifest: pd.DataFrame, folds: np.ndarray, probs: np.ndarray, suspects: pd.DataFrame) -> dict:
    """Out-of-fold accuracy (all, Training, Testing, each fold model's), flagged counts, given -> suggested
    pairs."""
    correct = probs.argmax(1) == manifest["label_idx"].to_numpy()
    on_disk = manifest["split_on_disk"].to_numpy()
    pairs = suspects.groupby(["given", "suggested"]).size()
    return {
        "n_images": int(len(correct)),
        "folds": int(folds.max() + 1),
        "oof_accuracy": float(correct.mean()),
        "oof_accuracy_training": float(correct[on_disk == "Training"].mean())
        if (on_disk == "Training").any()
        else None,
        "oof_accuracy_testing": float(correct[on_disk == "Testing"].mean()) if (on_disk == "Testing").any() else None,
        # fold -1 (Testing scored by a separate checkpoint) is no fold model's
        "oof_accuracy_by_fold": [float(correct[folds == fold].mean()) for fold in range(int(folds.max()) + 1)],
        "n_flagged": int(len(suspects)),
        "n_flagged_training": int((suspects["split_on_disk"] == "Training").sum()),
        "n_flagged_testing": int((suspects["split_on_disk"] == "Testing").sum()),
        "n_flagged_in_duplicate_groups": int(suspects["in_duplicate_group"].sum()),
        "given_to_suggested": {f"{g} -> {s}": int(n) for (g, s), n in pairs.sort_values(ascending=False).items()},
    }


def audit_table(
    manifest: pd.DataFrame, folds: np.ndarray, probs: np.ndarray, apart: np.ndarray | None = None
) -> tuple[pd.DataFrame, dict]:
    """Suspects and summary. `apart` (boolean per row) marks rows scored by another model than the
    rest: confident learning then runs on each part alone, since per-class thresholds learnt
    from one model's probabilities do not apply to another's; ranks restart in each part."""
    parts = [np.ones(len(manifest), bool)] if apart is None else [~apart, apart]
    suspects = pd.concat(
        [
            suspects_table(manifest[part].reset_index(drop=True), folds[part], probs[part])
            for part in parts
            if part.any()
        ],
        ignore_index=True,
    )
    return suspects, summarize(manifest, folds, probs, suspects)


def run_label_audit(
    cfg: Config,
    data: RunData,
    k: int = DEFAULT_FOLDS,
    progress: bool = True,
    gallery: int = 24,
    test_checkpoint: str | Path | None = None,
    members: list[str | Path] | None = None,
) -> dict:
    """The whole audit for a prepared run: out-of-fold probabilities (from fold models it trains, or
    from finished audits' folds combined, `members`), suspects, summary, gallery.
    Confident learning runs on Training and Testing apart when Testing has its own model (their
    probabilities come from different models, so per-class thresholds must not be shared)."""
    if members and test_checkpoint:
        raise SettingsError("an ensemble of audits scores every image out of fold: give members or a test checkpoint")
    if members:
        folds, probs = ensemble_of_folds(cfg, data, k, members)
    else:
        folds, probs = out_of_fold_probabilities(cfg, data, k, progress, test_checkpoint)
    suspects, summary = audit_table(data.manifest, folds, probs, apart=folds < 0 if test_checkpoint else None)
    root = Path(cfg.run_dir) / AUDIT_DIR
    with atomic_path(root / "label_issues.csv") as tmp:
        suspects.to_csv(tmp, index=False)
    with atomic_path(root / "review.csv") as tmp:
        review_table(data.manifest, folds, probs, suspects).to_csv(tmp, index=False)
    copies = copies_table(data.manifest, folds, probs, suspects)
    with atomic_path(root / "copies_of_flags.csv") as tmp:
        copies.to_csv(tmp, index=False)
    summary |= {
        "n_copies_of_flags": int(len(copies)),
        "n_copies_of_flags_testing": int((copies["split_on_disk"] == "Testing").sum()),
        "seed": cfg.seed,
    }
    if members:  # the fold models are the members' and their settings: this run's recipe trained nothing
        summary["members"] = [member_summary(member) for member in members]
        summary["combined_by"] = "normalised geometric mean of the members' held-out probabilities"
    else:
        summary |= {
            "recipe": cfg.recipe,
            "model": cfg.model,
            "epochs_per_fold": cfg.epochs,
            "testing_scored_by": str(test_checkpoint) if test_checkpoint else "the fold models",
            "image_size": cfg.image_size,
            "scoring_size": cfg.scoring_size,
        }
    write_text(root / AUDIT_SUMMARY, json.dumps(summary, indent=2) + "\n")
    # both parts, worst label quality first; Testing's flags also on their own, since they are the ones
    # that change a reported accuracy
    _gallery(data, suspects, gallery, root / "suspects.png")
    _gallery(data, suspects[suspects["split_on_disk"] == "Testing"], gallery, root / "testing_suspects.png")
    return summary


def _gallery(data: RunData, suspects: pd.DataFrame, n: int, save_to: Path) -> None:
    """The n worst-quality suspects, each tile named by its file, split, rank, given and suggested class."""
    top = suspects.sort_values("label_quality").head(n)
    if not len(top):
        save_to.unlink(missing_ok=True)  # no stale gallery from an earlier audit of this run
        return
    positions = pd.Index(data.manifest["path"]).get_indexer(top["path"])
    titles = [
        f"{Path(r.path).name} ({r.split_on_disk} #{r.rank})\ngiven {r.given}\nsuggested {r.suggested} ({r.p_suggested:.2f})"
        + ("\nin a duplicate group" if r.in_duplicate_group else "")
        for r in top.itertuples()
    ]
    image_grid([data.images[p] for p in positions], titles, ncols=6, save_to=save_to, size=2.2)

"""The committed label audit (docs/label_audit) follows from its own fold files: every image scored once,
the accuracies in its summary, and confident learning over the stored probabilities giving its list."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlib.config import CLASS_NAMES, build_config
from brainlib.label_audit import find_label_issues, read_held_out

AUDIT = Path(__file__).resolve().parents[1] / "docs" / "label_audit"


@pytest.fixture(scope="module")
def held_out():
    summary = json.loads((AUDIT / "label_audit.json").read_text())
    parts = []
    for fold in range(summary["folds"]):
        paths, probs = read_held_out(AUDIT / f"fold{fold}")
        assert probs.shape == (len(paths), len(CLASS_NAMES)), f"fold {fold}: probabilities and image list disagree"
        parts.append(pd.DataFrame({"path": paths, "fold": fold, "probs": list(probs)}))
    # in the run's manifest order (Training, then Testing, each by path): confident learning breaks ties
    # between equal probabilities (one slice stored four times) by position
    table = pd.concat(parts, ignore_index=True)
    table["testing"] = table["path"].str.startswith("Testing/")
    table = table.sort_values(["testing", "path"], ignore_index=True)
    table["label_idx"] = table["path"].str.split("/").str[1].map(CLASS_NAMES.index)
    return summary, table


def test_every_image_is_scored_once_with_the_summarys_accuracies(held_out):
    summary, table = held_out
    assert table["path"].is_unique and len(table) == summary["n_images"]
    right = np.stack(table["probs"]).argmax(1) == table["label_idx"].to_numpy()
    assert right.mean() == pytest.approx(summary["oof_accuracy"])
    by_fold = [right[table["fold"].to_numpy() == k].mean() for k in range(summary["folds"])]
    assert by_fold == pytest.approx(summary["oof_accuracy_by_fold"])
    testing = table["testing"].to_numpy()
    assert right[testing].mean() == pytest.approx(summary["oof_accuracy_testing"])


def test_confident_learning_over_the_stored_probabilities_gives_the_committed_list(held_out):
    summary, table = held_out
    flagged, _ = find_label_issues(table["label_idx"].to_numpy(), np.stack(table["probs"]))
    listed = pd.read_csv(AUDIT / "label_issues.csv")
    assert set(table["path"].to_numpy()[flagged]) == set(listed["path"])
    assert len(listed) == summary["n_flagged"] and listed["p_given"].is_monotonic_increasing
    assert (listed["path"].str.startswith("Testing/")).sum() == summary["n_flagged_testing"]


def test_every_fold_was_scored_at_the_summarys_side():
    """The fold files and the summary describe one audit: each fold's probabilities were scored at the side
    the summary names, with the temperature and conformal thresholds fitted there."""
    summary = json.loads((AUDIT / "label_audit.json").read_text())
    for fold in range(summary["folds"]):
        record = json.loads((AUDIT / f"fold{fold}" / "held_out_calibration.json").read_text())
        assert record["scoring_size"] == summary["scoring_size"] and record["temperature"] > 0
        assert set(record["conformal"]["thresholds"]) == {"0.01", "0.05"}


def test_the_copies_list_hangs_off_the_committed_flags_and_is_read():
    summary = json.loads((AUDIT / "label_audit.json").read_text())
    copies = pd.read_csv(AUDIT / "copies_of_flags.csv", dtype=str, keep_default_na=False)
    flags = pd.read_csv(AUDIT / "label_issues.csv")
    assert len(copies) == summary["n_copies_of_flags"]
    assert copies["copy_of"].isin(flags["path"]).all() and not copies["path"].isin(flags["path"]).any()
    given_of_flag = flags.set_index("path")["given"]
    assert (copies["given"].to_numpy() == given_of_flag[copies["copy_of"]].to_numpy()).all()
    assert (copies["verdict"] != "").all(), "every copy of a flag has a by-eye reading"


def test_the_256px_recipes_folds_hold_out_the_committed_audits_images():
    # the two audits are compared image by image (docs/trust.md), which needs the same held-out images per fold
    folds = sorted((AUDIT / "recipe_256").glob("fold*"))
    assert folds, "no fold of the 256-px recipe's audit is committed"
    side = build_config({}, {"recipe": "efficientnet_lite0_robust_256"}).scoring_size
    for fold in folds:
        paths, probs = read_held_out(fold)
        assert paths == read_held_out(AUDIT / fold.name)[0], fold.name
        assert probs.shape == (len(paths), len(CLASS_NAMES)) and np.allclose(probs.sum(1), 1, atol=1e-4)
        calibration = json.loads((fold / "held_out_calibration.json").read_text())
        assert calibration["scoring_size"] == side, f"{fold.name} scored at another side than its recipe's"


def test_the_two_recipes_ensemble_follows_from_its_members_folds():
    """docs/label_audit/ensemble combines the two committed audits' fold files (the normalised geometric mean,
    each fold recording its members), and confident learning over its stored probabilities gives its list."""
    ensemble = AUDIT / "ensemble"
    summary = json.loads((ensemble / "label_audit.json").read_text())
    assert [m["folder"] for m in summary["members"]] == ["docs/label_audit", "docs/label_audit/recipe_256"]
    paths, probs = [], []
    for fold in range(summary["folds"]):
        fold_paths, combined = read_held_out(ensemble / f"fold{fold}")
        members = json.loads((ensemble / f"fold{fold}" / "members.json").read_text())
        assert [m["fold"] for m in members] == [f"{m['folder']}/fold{fold}" for m in summary["members"]]
        member_probs = []
        for member in members:
            member_paths, member_prob = read_held_out(AUDIT.parents[1] / member["fold"])
            assert member_paths == fold_paths, f"{member['fold']} holds other images than the ensemble's fold"
            member_probs.append(member_prob.astype(float))
        expected = np.sqrt(member_probs[0] * member_probs[1])
        assert np.allclose(combined, expected / expected.sum(1, keepdims=True), atol=1e-6)
        paths += fold_paths
        probs.append(combined)
    table = pd.DataFrame({"path": paths, "probs": list(np.concatenate(probs))})
    table["testing"] = table["path"].str.startswith("Testing/")
    table = table.sort_values(["testing", "path"], ignore_index=True)  # the manifest's order, as above
    labels = table["path"].str.split("/").str[1].map(CLASS_NAMES.index).to_numpy()
    right = np.stack(table["probs"]).argmax(1) == labels
    assert right.mean() == pytest.approx(summary["oof_accuracy"])
    flagged, _ = find_label_issues(labels, np.stack(table["probs"]))
    listed = pd.read_csv(ensemble / "label_issues.csv")
    assert set(table["path"].to_numpy()[flagged]) == set(listed["path"]) and len(listed) == summary["n_flagged"]

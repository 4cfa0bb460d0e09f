"""Label audit: group-aware folds, cleanlab finds a planted label flip, the command end to end."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlib import checkpoint, label_audit
from brainlib.cli import main
from brainlib.config import CLASS_NAMES
from brainlib.errors import SettingsError
from brainlib.loader import load_run_data


def test_folds_keep_duplicate_groups_together_and_every_class_in_every_fold():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    groups = np.arange(200)
    groups[1::2] = groups[::2]  # pairs of twins (same class)
    groups = rng.permutation(100)[groups // 2]
    folds = label_audit.assign_folds(pd.DataFrame({"label_idx": labels, "near_group": groups}), 5, seed=1)
    frame = pd.DataFrame({"fold": folds, "group": groups, "label": labels})
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    assert (frame.groupby("fold")["label"].nunique() == 4).all()


def test_confident_learning_finds_planted_label_flips():
    rng = np.random.default_rng(3)
    n = 400
    truth = rng.integers(0, 4, n)
    confidence = rng.uniform(0.6, 1.0, n)  # a strong out-of-fold model, surer of some images than others
    probs = rng.dirichlet([0.5] * 4, size=n) * (1 - confidence)[:, None]
    probs[np.arange(n), truth] += confidence
    given = truth.copy()
    planted = np.array([5, 77, 303])
    given[planted] = (truth[planted] + 2) % 4  # clear images filed under the wrong class (a glioma under notumor)
    probs[planted] = 0.01
    probs[planted, truth[planted]] = 0.97
    manifest = pd.DataFrame(
        {
            "path": [f"img{i}.jpg" for i in range(n)],
            "split_on_disk": np.where(np.arange(n) < 300, "Training", "Testing"),
            "label_idx": given,
            "exact_dup": np.arange(n) == 77,
            "near_dup": False,
        }
    )
    suspects, summary = label_audit.audit_table(manifest, np.arange(n) % 5, probs)
    assert set(suspects["path"]) == {f"img{i}.jpg" for i in planted}
    by_path = suspects.set_index("path")
    assert (
        by_path.loc["img5.jpg", "suggested"] == CLASS_NAMES[truth[5]]
        and by_path.loc["img5.jpg", "given"] == CLASS_NAMES[given[5]]
    )
    assert (
        summary["n_flagged_testing"] == 1
        and summary["n_flagged_training"] == 2
        and summary["n_flagged_in_duplicate_groups"] == 1
    )
    # the planted rows 5, 77 and 303 sit in folds 0, 2 and 3 of 80 images each; the model is right on the rest
    assert summary["oof_accuracy_by_fold"] == [79 / 80, 1.0, 79 / 80, 79 / 80, 1.0]
    assert summary["oof_accuracy"] == (probs.argmax(1) == given).mean()
    assert sum(summary["given_to_suggested"].values()) == 3


def test_review_lists_the_unsure_images_confident_learning_leaves_out():
    # an image the out-of-fold model is merely unsure of (its label at 0.4, no other class confident)
    # is not a suspect, but heads its class's review list; flagged images are left to the suspects' list
    rng = np.random.default_rng(5)
    n = 200
    given = np.repeat(np.arange(4), n // 4)
    probs = np.full((n, 4), 0.01)
    probs[np.arange(n), given] = rng.uniform(0.9, 0.97, n)
    unsure, flipped = 12, 20  # both filed as class 0
    probs[unsure] = [0.4, 0.2, 0.2, 0.2]
    probs[flipped] = [0.01, 0.01, 0.97, 0.01]
    manifest = pd.DataFrame(
        {
            "path": [f"img{i}.jpg" for i in range(n)],
            "split_on_disk": np.where(np.arange(n) % 2 == 0, "Training", "Testing"),
            "label_idx": given,
            "exact_dup": False,
            "near_dup": False,
        }
    )
    folds = np.arange(n) % 5
    suspects, _ = label_audit.audit_table(manifest, folds, probs)
    assert "img12.jpg" not in set(suspects["path"]) and "img20.jpg" in set(suspects["path"])
    review = label_audit.review_table(manifest, folds, probs, suspects, per_class=3)
    assert not review["path"].isin(suspects["path"]).any()
    assert len(review) == 2 * 4 * 3  # Training and Testing apart, three per class
    training_class0 = review[(review["split_on_disk"] == "Training") & (review["given"] == CLASS_NAMES[0])]
    assert training_class0.iloc[0]["path"] == "img12.jpg" and training_class0.iloc[0]["p_given"] == 0.4
    # img20 (flagged) ranks first in its class and is skipped, so img12 is rank 2
    assert list(training_class0["class_rank"]) == [2, 3, 4]
    assert (training_class0["p_given"].diff().dropna() >= 0).all()


def test_copies_of_a_flagged_image_are_listed_under_it_when_they_share_its_label():
    # group 7: a slice stored four times, three filed "notumor" (two of them flagged) and one filed glioma;
    # group 8: flagged alone; group 9: copies of an unflagged image
    manifest = pd.DataFrame(
        {
            "path": [f"{split}/img{i}.jpg" for i, split in enumerate(["Training"] * 4 + ["Testing"] * 3)],
            "split_on_disk": ["Training"] * 4 + ["Testing"] * 3,
            "label_idx": [2, 2, 0, 1, 2, 3, 3],
            "near_group": [7, 7, 7, 8, 7, 9, 9],
            "exact_dup": False,
            "near_dup": [True, True, True, False, True, True, True],
        }
    )
    probs = np.full((7, 4), 0.25)
    suspects = pd.DataFrame({"path": ["Training/img1.jpg", "Training/img3.jpg", "Training/img0.jpg"]})
    copies = label_audit.copies_table(manifest, np.zeros(7, int), probs, suspects)
    # img4 (Testing, same label) is listed once, under the best-ranked suspect of its group; img2 (another
    # label) and group 9 (nothing flagged) are not
    assert list(copies["path"]) == ["Testing/img4.jpg"] and list(copies["copy_of"]) == ["Training/img1.jpg"]
    assert list(copies["given"]) == ["notumor"] and list(copies["split_on_disk"]) == ["Testing"]


def test_audit_command_scores_every_image_out_of_fold_and_resumes(prepared_run, capsys):
    args = ["audit-labels", "--run-dir", prepared_run.run_dir, "--folds", "3", "--epochs", "1"]
    assert main(args) == 0
    fold_lines = [line for line in capsys.readouterr().out.splitlines() if "held-out images right" in line]
    root = prepared_run.run_dir + "/label_audit"
    manifest = load_run_data(prepared_run).manifest
    probs = np.load(f"{root}/oof_probs.npy")
    assert probs.shape == (len(manifest), 4) and np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
    folds = pd.read_csv(f"{root}/folds.csv")
    assert list(folds["path"]) == list(manifest["path"]) and set(folds["fold"]) == {0, 1, 2}
    summary = json.loads(open(f"{root}/label_audit.json").read())
    assert summary["n_images"] == len(manifest) and summary["folds"] == 3 and summary["epochs_per_fold"] == 1
    # each fold's accuracy, printed as it lands and kept in the summary, adds up to the whole audit's
    sizes = pd.read_csv(f"{root}/folds.csv")["fold"].value_counts().sort_index().to_numpy()
    by_fold = np.array(summary["oof_accuracy_by_fold"])
    assert len(fold_lines) == 3 and np.isclose((by_fold * sizes).sum() / sizes.sum(), summary["oof_accuracy"])
    assert all(f"{acc:.2%} of {size} held-out" in line for acc, size, line in zip(by_fold, sizes, fold_lines))
    assert pd.read_csv(f"{root}/label_issues.csv").shape[0] == summary["n_flagged"]
    assert not pd.read_csv(f"{root}/review.csv")["path"].isin(pd.read_csv(f"{root}/label_issues.csv")["path"]).any()
    copies = pd.read_csv(f"{root}/copies_of_flags.csv")
    assert (
        len(copies) == summary["n_copies_of_flags"]
        and copies["copy_of"].isin(pd.read_csv(f"{root}/label_issues.csv")["path"]).all()
    )
    # the galleries: all suspects, and Testing's alone, each only when there is something to show
    assert os.path.exists(f"{root}/suspects.png") == (summary["n_flagged"] > 0)
    assert os.path.exists(f"{root}/testing_suspects.png") == (summary["n_flagged_testing"] > 0)
    # each fold's model never saw its held-out images
    for fold in range(3):
        fold_manifest = label_audit.fold_run_data(
            load_run_data(prepared_run), folds["fold"].to_numpy(), fold, 0.1, prepared_run.seed
        ).manifest
        held_out = fold_manifest["split"] == "test"
        assert (held_out == (folds["fold"] == fold)).all()
    # a second call reuses the folds on disk: no fold trains again
    stamps = {f: (open(f"{root}/fold{f}/held_out_probs.npy", "rb").read()) for f in range(3)}
    mtimes = [os.path.getmtime(f"{root}/fold{f}/checkpoints/best.pt") for f in range(3)]
    assert main(args) == 0
    assert [os.path.getmtime(f"{root}/fold{f}/checkpoints/best.pt") for f in range(3)] == mtimes
    assert np.array_equal(np.load(f"{root}/oof_probs.npy"), probs) and stamps
    # a fold whose stored probabilities belong to other images is refused, not reused
    listed = f"{root}/fold0/held_out_paths.txt"
    paths = open(listed).read().splitlines()
    assert paths == list(folds["path"][folds["fold"] == 0])
    with open(listed, "w") as f:
        f.write("\n".join(paths[1:] + paths[:1]) + "\n")
    assert main(args) == 2


def test_finished_folds_are_scored_again_at_a_new_scoring_side_without_training(prepared_run, capsys):
    """A recipe that comes to score at a larger side (FixRes) re-scores an audit's finished folds with
    their own models, each temperature fitted again at that side on the fold's validation images."""
    args = ["audit-labels", "--run-dir", prepared_run.run_dir, "--folds", "3", "--epochs", "1"]
    args += ["--model", "resnet18_scratch", "--image-size", "64", "--cache-size", "128"]
    assert main(args) == 0
    root = prepared_run.run_dir + "/label_audit"
    probs = np.load(f"{root}/oof_probs.npy")
    mtimes = [os.path.getmtime(f"{root}/fold{f}/checkpoints/best.pt") for f in range(3)]
    assert all(label_audit.held_out_side(Path(f"{root}/fold{f}"), prepared_run) == 64 for f in range(3))
    assert main(args + ["--test-image-size", "96"]) == 0
    assert [os.path.getmtime(f"{root}/fold{f}/checkpoints/best.pt") for f in range(3)] == mtimes
    assert all(label_audit.held_out_side(Path(f"{root}/fold{f}"), prepared_run) == 96 for f in range(3))
    # each fold's record holds the temperature (and thresholds) fitted at 96 px, not the checkpoint's 64-px ones
    record = json.loads(open(f"{root}/fold0/{label_audit.HELD_OUT_CALIBRATION}").read())
    trained = checkpoint.load_checkpoint(f"{root}/fold0/checkpoints/best.pt")
    assert record["temperature"] != trained["temperature"] and set(record["conformal"]["thresholds"]) == {
        "0.01",
        "0.05",
    }
    rescored = np.load(f"{root}/oof_probs.npy")
    assert not np.allclose(rescored, probs) and np.allclose(rescored.sum(1), 1, atol=1e-4)
    assert json.loads(open(f"{root}/label_audit.json").read())["scoring_size"] == 96
    # back at the training side with a fold's model gone: one line that says what to do, nothing half-written
    shutil.rmtree(f"{root}/fold0/checkpoints")
    capsys.readouterr()
    assert main(args) == 2
    assert "--test-image-size 96" in capsys.readouterr().err.strip().splitlines()[-1]
    assert np.array_equal(np.load(f"{root}/oof_probs.npy"), rescored)


def test_testing_can_be_scored_by_a_checkpoint_trained_on_training_alone(trained_run):
    """Training in folds, Testing by the run's own best.pt (it saw Training only); confident
    learning runs on each part alone."""
    best = f"{trained_run.run_dir}/checkpoints/best.pt"
    args = [
        "audit-labels",
        "--run-dir",
        trained_run.run_dir,
        "--folds",
        "3",
        "--epochs",
        "1",
        "--test-checkpoint",
        best,
    ]
    assert main(args) == 0
    root = trained_run.run_dir + "/label_audit"
    manifest = load_run_data(trained_run).manifest
    folds = pd.read_csv(f"{root}/folds.csv")["fold"].to_numpy()
    testing = (manifest["split_on_disk"] == "Testing").to_numpy()
    assert (folds[testing] == -1).all() and set(folds[~testing]) == {0, 1, 2}
    summary = json.loads(open(f"{root}/label_audit.json").read())
    assert summary["testing_scored_by"] == best and summary["folds"] == 3
    probs = np.load(f"{root}/oof_probs.npy")
    assert np.isfinite(probs).all()
    fold0 = label_audit.fold_run_data(load_run_data(trained_run), folds, 0, 0.1, trained_run.seed).manifest
    assert (fold0.loc[testing, "split"] == "unused").all() and not (fold0.loc[~testing, "split"] == "unused").any()


def test_more_folds_than_a_class_has_separate_images_is_one_settings_error():
    """sklearn stopped with a traceback (or, with groups, left a fold without the class)."""
    frame = pd.DataFrame({"label_idx": np.repeat([0, 1, 2, 3], 6), "near_group": np.arange(24) // 2})
    assert sorted(set(label_audit.assign_folds(frame, 3, seed=0))) == [0, 1, 2]
    with pytest.raises(SettingsError, match="4 folds need .* glioma has 3 in this run"):
        label_audit.assign_folds(frame, 4, seed=0)


def test_a_fold_is_read_only_for_the_images_it_was_computed_on(tmp_path):
    """held_out_of_fold, the one reader scripts use: its rows are the fold's images in order, or an error."""
    from brainlib.errors import SettingsError

    fold = tmp_path / "fold0"
    fold.mkdir()
    paths = ["Training/glioma/a.jpg", "Testing/notumor/b.jpg"]
    probs = np.eye(len(CLASS_NAMES))[:2]
    np.save(fold / "held_out_probs.npy", probs)
    (fold / "held_out_paths.txt").write_text("\n".join(paths) + "\n")
    assert np.array_equal(label_audit.held_out_of_fold(fold, paths), probs)
    with pytest.raises(SettingsError, match="other images"):
        label_audit.held_out_of_fold(fold, paths[::-1])  # the same images in another order: rows would swap
    np.save(fold / "held_out_probs.npy", probs[:1])
    with pytest.raises(SettingsError, match="1 rows for 2 listed images"):
        label_audit.held_out_of_fold(fold, paths)


def _member_audit(folder: Path, manifest: pd.DataFrame, folds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A finished audit's folds as an audit stores them (fold<k>/ with its images and probabilities), made up."""
    probs = rng.dirichlet(np.ones(len(CLASS_NAMES)), size=len(manifest)).astype(np.float32)
    for fold in np.unique(folds):
        rows = folds == fold
        (folder / f"fold{fold}").mkdir(parents=True)
        (folder / f"fold{fold}" / "held_out_paths.txt").write_text("\n".join(manifest["path"][rows]) + "\n")
        np.save(folder / f"fold{fold}" / "held_out_probs.npy", probs[rows])
    return probs


def test_two_finished_audits_combine_into_one_without_training(prepared_run, tmp_path, capsys):
    """--members: each image's probabilities are the normalised geometric mean of the members' (the ensemble
    kind's rule), fold by fold, and nothing trains; a member over other folds is one line, not a traceback."""
    manifest = load_run_data(prepared_run).manifest
    folds = label_audit.assign_folds(manifest, 3, prepared_run.seed)
    rng = np.random.default_rng(0)
    first = _member_audit(tmp_path / "a", manifest, folds, rng)
    (tmp_path / "b" / "label_audit").mkdir(parents=True)  # a run folder: its folds under label_audit/
    second = _member_audit(tmp_path / "b" / "label_audit", manifest, folds, rng)
    (tmp_path / "b" / "label_audit" / "label_audit.json").write_text(json.dumps({"recipe": "r", "oof_accuracy": 0.5}))
    args = ["audit-labels", "--run-dir", prepared_run.run_dir, "--folds", "3"]
    assert main(args + ["--members", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    root = Path(prepared_run.run_dir) / "label_audit"
    combined = np.load(root / "oof_probs.npy")
    expected = np.sqrt(first.astype(float) * second)
    assert np.allclose(combined, expected / expected.sum(1, keepdims=True), atol=1e-6)
    assert not (root / "fold0" / "checkpoints").exists(), "a combined audit trains nothing"
    summary = json.loads((root / "label_audit.json").read_text())
    assert [m["folder"] for m in summary["members"]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert summary["members"][1]["recipe"] == "r" and "recipe" not in summary and "epochs_per_fold" not in summary
    right = combined.argmax(1) == manifest["label_idx"].to_numpy()
    assert summary["oof_accuracy"] == pytest.approx(right.mean())
    assert json.loads((root / "fold2" / label_audit.MEMBERS).read_text())[0]["fold"] == str(tmp_path / "a" / "fold2")
    # a member audited with another fold count holds other images in its fold 0: refused in one line
    shutil.rmtree(tmp_path / "a")
    _member_audit(tmp_path / "a", manifest, label_audit.assign_folds(manifest, 2, prepared_run.seed), rng)
    capsys.readouterr()
    assert main(args + ["--members", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "same --seed" in error[0] and "Traceback" not in error[0]
    assert np.array_equal(np.load(root / "oof_probs.npy"), combined), "nothing half-written"
    # one member is not an ensemble; members and a Testing checkpoint exclude each other
    assert main(args + ["--members", str(tmp_path / "b")]) == 2
    assert main(args + ["--members", str(tmp_path / "b"), str(tmp_path / "b"), "--test-checkpoint", "x.pt"]) == 2

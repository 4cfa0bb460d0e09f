"""scripts/audit_finished_folds.py: the report on "no tumour" images a reader saw a lesion in compares them with
the other scored "no tumour" images of their split, and leaves unscored ones out."""

import json

import numpy as np
import pandas as pd


def test_lesion_report_counts_against_the_split_peers(capsys, script):
    # rows 0-3 listed lesions (row 3 not scored yet), 4-11 other Testing "no tumour", 12-13 Training "no tumour"
    # (another split: not peers), 14 a Testing glioma (another class: not a peer)
    split = ["Testing"] * 12 + ["Training"] * 2 + ["Testing"]
    label = [2] * 14 + [0]
    manifest = pd.DataFrame(
        {"path": [f"{s}/x/{i}.jpg" for i, s in enumerate(split)], "split_on_disk": split, "label_idx": label}
    )
    probs = np.zeros((15, 4))
    probs[:, 2] = 0.97
    probs[:, 0] = 0.03
    probs[[0, 1], 2], probs[[0, 1], 0] = 0.2, 0.8  # two lesions called glioma
    probs[2, 2], probs[2, 0] = 0.6, 0.4
    probs[4, 2], probs[4, 0] = 0.4, 0.6  # one peer called glioma
    probs[12, 2], probs[12, 0] = 0.1, 0.9  # a Training image called glioma: not counted
    scored = np.ones(15, bool)
    scored[3] = False
    script("audit_finished_folds").lesion_report(manifest, probs, scored, manifest["path"][:4].tolist())
    out = capsys.readouterr().out
    assert "lesion images scored: 3 of 4; called a tumour: 2 (0, 1) against 1 of the other 8" in out
    # p(notumor) of the lesions 0.2, 0.2, 0.6 against 0.4 and seven 0.97: 23 of 24 pairs ordered, none tied
    assert "AUROC 0.96" in out


def test_coverage_report_uses_each_fold_models_own_thresholds(tmp_path, capsys, script):
    from brainlib.checkpoint import save_checkpoint

    # fold 0's 99 % threshold keeps only classes at p >= 0.7; fold 1's keeps every class at p >= 0.1
    audit = tmp_path / "label_audit"
    for fold, threshold in ((0, 0.3), (1, 0.9)):
        state = {
            "model_name": "seed_cnn",
            "class_names": ["glioma", "meningioma", "notumor", "pituitary"],
            "config": {},
            "model_state": {},
            "conformal": {"score": "lac", "n_calibration": 9, "thresholds": {"0.01": threshold, "0.05": 0.0}},
        }
        save_checkpoint(state, audit / f"fold{fold}" / "checkpoints" / "best.pt")
    # every image: 0.6 on class 0, 0.4 on class 1; labels 1 (the runner-up) on all four images
    probs = np.tile([0.6, 0.4, 0.0, 0.0], (4, 1))
    manifest = pd.DataFrame(
        {
            "path": [f"Training/x/{i}.jpg" for i in range(4)],
            "split_on_disk": ["Training"] * 4,
            "label_idx": [1, 1, 1, 1],
        }
    )
    folds = pd.DataFrame({"path": manifest["path"], "fold": [0, 0, 1, 1]})
    script("audit_finished_folds").coverage_report(audit, folds, manifest, probs, [0, 1])
    out = capsys.readouterr().out
    # fold 0's sets hold class 0 alone (misses), fold 1's hold both classes (covers): half covered, sizes 1 and 2
    assert "99% prediction sets out of fold" in out
    assert "Training: every class 0.5000" in out and "mean size 1.500, 50.0% uncertain" in out
    assert "meningioma 0.5000" in out and "glioma - (n=0)" in out and "Testing:" not in out
    # at 95 % both thresholds keep the top class alone: nothing covered
    assert "95% prediction sets out of fold" in out and "Training: every class 0.0000" in out
    # a fold scored again at another side than its model's carries the thresholds fitted there: those count
    record = {"scoring_size": 272, "temperature": 1.0, "conformal": {"thresholds": {"0.01": 0.9, "0.05": 0.0}}}
    (audit / "fold0" / "held_out_calibration.json").write_text(json.dumps(record))
    script("audit_finished_folds").coverage_report(audit, folds, manifest, probs, [0, 1])
    assert "Training: every class 1.0000" in capsys.readouterr().out


def test_against_pairs_two_audits_image_by_image_over_what_both_scored(tmp_path, capsys, script):
    # five images, labels all glioma; this audit scored rows 0-3 (row 4 not yet), the other audit rows 1-4
    manifest = pd.DataFrame(
        {
            "path": ["Training/g/0.jpg", "Training/g/1.jpg", "Testing/g/2.jpg", "Testing/g/3.jpg", "Testing/g/4.jpg"],
            "split_on_disk": ["Training", "Training", "Testing", "Testing", "Testing"],
            "label_idx": [0] * 5,
        }
    )
    right, wrong = [0.9, 0.1, 0.0, 0.0], [0.1, 0.9, 0.0, 0.0]
    probs = np.array([right, right, right, wrong, right])
    scored = np.array([True, True, True, True, False])
    # the other audit's folds in another order: image 2 wrong there, image 3 right there, image 1 right in both
    other = tmp_path / "other"
    for fold, rows in (
        (0, {"Testing/g/3.jpg": right, "Training/g/1.jpg": right}),
        (1, {"Testing/g/2.jpg": wrong, "Testing/g/4.jpg": wrong}),
    ):
        (other / f"fold{fold}").mkdir(parents=True)
        (other / f"fold{fold}" / "held_out_paths.txt").write_text("\n".join(rows) + "\n")
        np.save(other / f"fold{fold}" / "held_out_probs.npy", np.array(list(rows.values())))
    module = script("audit_finished_folds")
    module.against_report(manifest, probs, scored, module.held_out_by_path(other), "other")
    out = capsys.readouterr().out
    # image 0 is not in the other audit and image 4 not scored here: three images paired
    assert "against other: 3 images scored by both" in out
    assert "Training (1): 100.00% against 100.00%" in out
    assert "Testing (2): 50.00% against 50.00%, +0.00%" in out and "right only here 1, only there 1" in out
    assert "all (3): 66.67% against 66.67%" in out


def test_a_fold_whose_list_and_probabilities_disagree_is_one_error(tmp_path, script):
    import pytest

    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / "held_out_paths.txt").write_text("a.jpg\nb.jpg\n")
    np.save(tmp_path / "fold0" / "held_out_probs.npy", np.zeros((3, 4)))
    with pytest.raises(SystemExit, match="3 rows for 2 listed images"):
        script("audit_finished_folds").held_out_by_path(tmp_path)

"""scripts/cross_fold_coverage.py: a fold's cross-fold thresholds come from the other folds' Training images only,
per class where asked, and each image's set uses its own fold's thresholds."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest


def _fold(audit: Path, fold: int, rows: list[tuple[str, list[float]]], carve: float) -> None:
    folder = audit / f"fold{fold}"
    folder.mkdir(parents=True)
    (folder / "held_out_paths.txt").write_text("\n".join(path for path, _ in rows) + "\n")
    np.save(folder / "held_out_probs.npy", np.array([probs for _, probs in rows]))
    thresholds = {"0.5": carve}
    record = {"scoring_size": 224, "temperature": 1.0, "conformal": {"score": "lac", "thresholds": thresholds}}
    (folder / "held_out_calibration.json").write_text(json.dumps(record))


@pytest.fixture
def audit(tmp_path):
    audit = tmp_path / "label_audit"
    # fold 0's own Training glioma (score 0.95) and fold 1's Testing glioma (0.99) must not count for fold 0
    _fold(
        audit,
        0,
        [("Training/glioma/a.jpg", [0.05, 0.95, 0, 0]), ("Testing/meningioma/b.jpg", [0.45, 0.5, 0.05, 0])],
        carve=0.6,
    )
    _fold(
        audit,
        1,
        [
            ("Training/glioma/c.jpg", [0.9, 0.1, 0, 0]),
            ("Training/glioma/d.jpg", [0.8, 0.2, 0, 0]),
            ("Training/meningioma/e.jpg", [0.4, 0.6, 0, 0]),
            ("Training/meningioma/f.jpg", [0.5, 0.5, 0, 0]),
            ("Testing/glioma/g.jpg", [0.01, 0.99, 0, 0]),
        ],
        carve=0.5,
    )
    _fold(audit, 2, [("Training/glioma/h.jpg", [0.7, 0.3, 0, 0]), ("Training/meningioma/i.jpg", [0.6, 0.4, 0, 0])], 0.5)
    return audit


def test_thresholds_from_the_other_folds_training_images(audit, script):
    module = script("cross_fold_coverage")
    images, probs, carve = module.read_folds(audit)
    assert images["fold"].tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert images["label_idx"].tolist() == [0, 1, 0, 0, 1, 1, 0, 0, 1]
    one, per_class = module.cross_fold_thresholds(probs, images, 0, 0.5)
    # glioma scores 0.1, 0.2, 0.3 and meningioma 0.4, 0.5, 0.6: the rank ceil((n + 1) * 0.5) of each
    assert one == pytest.approx(0.4)
    np.testing.assert_allclose(per_class, [0.2, 0.5, 1.0, 1.0])  # no calibration image of a class: every set
    cross = {fold: module.cross_fold_thresholds(probs, images, fold, 0.5) for fold in carve}
    kinds = module.all_sets(probs, images, carve, cross, 0.5)
    # b (meningioma 0.5, glioma 0.45): fold 0's own carve 0.6 adds glioma (score 0.55), the cross-fold 0.4 does not
    assert kinds["fold carve"][1].tolist() == [True, True, False, False]
    assert kinds["cross-fold, one"][1].tolist() == [False, True, False, False]
    # per class: glioma's 0.2 leaves it out; the classes without calibration images (1.0) join
    assert kinds["cross-fold, per class"][1].tolist() == [False, True, True, True]


def test_report_names_each_testing_image_outside_its_set(audit, monkeypatch, capsys, script):
    monkeypatch.setattr(sys, "argv", ["cross_fold_coverage.py", str(audit), "--alpha", "0.5", "--verdicts", ""])
    script("cross_fold_coverage").main()
    out = capsys.readouterr().out
    # fold 1's Testing glioma at p 0.01: folds 0 and 2 give glioma scores 0.95 and 0.3 (threshold 0.95), 0.99 is above
    assert "Testing images outside their per-class set: 1" in out
    assert "Testing/glioma/g.jpg: p(given) 0.010, answered meningioma 0.990; verdict: -" in out


def test_a_missing_alpha_is_one_line(audit, monkeypatch, script):
    monkeypatch.setattr(sys, "argv", ["cross_fold_coverage.py", str(audit), "--alpha", "0.01"])
    with pytest.raises(SystemExit, match="no carve threshold at alpha 0.01"):
        script("cross_fold_coverage").main()

"""The model card is generated from a run's files, and the committed one matches the committed metrics."""

import json
from pathlib import Path

import pandas as pd

from brainlib import evaluate
from brainlib.cli import main
from brainlib.config import CLASS_NAMES
from brainlib.loader import load_run_data

ROOT = Path(__file__).resolve().parents[1]


def test_model_card_is_built_from_the_checkpoint_and_its_evaluation(trained_run, tmp_path):
    data = load_run_data(trained_run)
    metrics = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shift_severities=(2,)))
    evaluate.write_metrics(metrics, trained_run.run_dir)
    out = tmp_path / "card.md"
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    assert main(["model-card", "--checkpoint", ckpt, "--eval-run", trained_run.run_dir, "--out", str(out)]) == 0
    card = out.read_text()
    for heading in (
        "Intended use",
        "Training data",
        "Metrics",
        "Prediction sets",
        "acquisition shift",
        "Label quality",
        "failure modes",
        "reproduce",
    ):
        assert f"## {heading}" in card or heading in card, heading
    low, high = metrics["intervals"]["accuracy"]
    assert f"Accuracy {100 * metrics['accuracy']:.2f} % (95 % CI [{100 * low:.2f}, {100 * high:.2f}])" in card
    assert "Not a diagnostic device" in card.replace("**", "") and "nan" not in card
    assert "--shift-severities 2" in card
    assert "By-eye readings" not in card  # no audit given
    assert "a rule on the file's size alone tells tumour from no tumour" in card  # brainlib.shortcuts


def test_model_card_reports_accuracy_both_ways_from_the_audits_readings(trained_run, tmp_path):
    data = load_run_data(trained_run)
    metrics = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False))
    evaluate.write_metrics(metrics, trained_run.run_dir)
    pred = pd.read_csv(Path(trained_run.run_dir) / "predictions.csv")
    right = pred[pred["pred"] == pred["label"]].iloc[0]  # read as wrong: one more error
    other = next(c for c in CLASS_NAMES if c != right["label"])
    audit = tmp_path / "audit"
    audit.mkdir()
    summary = {"folds": 2, "recipe": "r", "image_size": 64, "epochs_per_fold": 1, "oof_accuracy": 0.5}
    summary |= {"n_flagged_training": 1, "n_flagged_testing": 1, "n_flagged_in_duplicate_groups": 0}
    (audit / "label_audit.json").write_text(json.dumps(summary | {"given_to_suggested": {}}))
    pd.DataFrame(
        [[right["path"], right["label"], other, "label wrong", "x"], ["Training/y.jpg", "glioma", "", "ambiguous", ""]],
        columns=["path", "given", "read_as", "verdict", "reading"],
    ).to_csv(audit / "verdicts.csv", index=False)
    # two flags, one of them read: the card counts the read one's verdict
    pd.DataFrame({"path": ["Training/y.jpg", "Training/z.jpg"], "verdict": ["", ""]}).to_csv(
        audit / "label_issues.csv", index=False
    )
    out = tmp_path / "card.md"
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    args = ["model-card", "--checkpoint", ckpt, "--eval-run", trained_run.run_dir, "--audit-run", str(audit)]
    assert main([*args, "--out", str(out)]) == 0
    card = out.read_text()
    errors = int((pred["pred"] != pred["label"]).sum())
    assert "of 2 images: 1 label wrong, 0 label wrong (class unknown), 1 ambiguous, 0 model wrong" in card
    assert "Flags read by eye: 1 of 2 (1 ambiguous)." in card
    assert f"makes {errors + 1} errors" in card and f"against {errors} (" in card


def test_model_card_needs_an_evaluated_run(tmp_path, capsys, trained_run):
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    assert main(["model-card", "--checkpoint", ckpt, "--eval-run", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 3
    assert "metrics.json not found" in capsys.readouterr().err


def test_the_committed_model_card_reports_the_committed_metrics():
    card = (ROOT / "docs" / "MODEL_CARD.md").read_text()
    metrics = json.loads((ROOT / "checkpoints" / "efficientnet_lite0_robust.metrics.json").read_text())
    assert card.startswith("# Model card: `efficientnet_lite0_robust.pt`")
    assert f"Accuracy {100 * metrics['accuracy']:.2f} %" in card
    assert f"{100 * metrics['accuracy_leakage_free']:.2f} %" in card


def test_model_card_says_how_the_model_meets_the_tumour_type_shortcut():
    from brainlib.model_card import _file_shortcut

    share = {"n": 10, "accuracy": 0.9, "ci95": (0.6, 0.98)}
    report = {
        "rule_tumour_vs_none_accuracy": 0.9,
        "conflicting": share,
        "aligned": share,
        "tumour_called_none": {"aligned": 0, "aligned_n": 8, "conflicting": 1, "conflicting_n": 9},
        "tumour_type": {
            "rule_accuracy": 0.45,
            "largest_class_share": 0.34,
            "errors": {"aligned": 2, "aligned_n": 40, "conflicting": 3, "conflicting_n": 50, "toward_file_type": 1},
        },
    }
    (line,) = _file_shortcut(report)
    assert "names the type of 45.00 % of the tumour test images" in line
    assert "2 of 40 whose format names their type and 3 of 50 whose format names another, 1 of them" in line
    assert "Inside the tumour classes" not in _file_shortcut(report | {"tumour_type": None})[0]


def test_the_reproduce_command_names_each_setting_once():
    """A checkpoint trained at another seed than its recipe's: `prepare` gets --seed once, with its value."""
    from brainlib.config import build_config
    from brainlib.model_card import _reproduce_flags

    cfg = build_config({}, {"recipe": "efficientnet_lite0_robust_256", "seed": 2, "split_seed": 42}).__dict__
    flags = _reproduce_flags(cfg).split()
    assert flags[:2] == ["--recipe", "efficientnet_lite0_robust_256"]
    assert flags.count("--seed") == 1 and flags[flags.index("--seed") + 1] == "2"
    assert flags[flags.index("--split-seed") + 1] == "42"
    plain = _reproduce_flags(build_config({}, {"recipe": "efficientnet_lite0"}).__dict__).split()
    assert plain == ["--recipe", "efficientnet_lite0", "--seed", "42"]


def test_an_audit_in_a_subfolder_reads_the_shared_verdicts_above_it(tmp_path):
    """The audits under docs/label_audit/ share one verdicts.csv; a folder's own file comes first."""
    from brainlib.model_card import _verdicts_file

    sub = tmp_path / "label_audit" / "recipe_256"
    sub.mkdir(parents=True)
    (tmp_path / "label_audit" / "verdicts.csv").write_text("path,verdict\n")
    assert _verdicts_file(sub) == tmp_path / "label_audit" / "verdicts.csv"
    (sub / "verdicts.csv").write_text("path,verdict\n")
    assert _verdicts_file(sub) == sub / "verdicts.csv"


def test_the_card_names_each_member_of_an_ensemble_of_audits(tmp_path):
    """An ensemble of audits trained nothing itself: the card describes its members' fold models."""
    from brainlib.model_card import _label_section

    members = [
        {"folder": "a", "recipe": "r224", "image_size": 224, "epochs_per_fold": 10, "scoring_size": 272},
        {"folder": "b", "recipe": "r256", "image_size": 256, "epochs_per_fold": 20, "scoring_size": 320},
    ]
    members[0]["oof_accuracy"], members[1]["oof_accuracy"] = 0.979, 0.9776
    summary = {"folds": 5, "members": members, "oof_accuracy": 0.98, "given_to_suggested": {"a -> b": 2}}
    summary |= {"n_flagged_training": 1, "n_flagged_testing": 1, "n_flagged_in_duplicate_groups": 0}
    (tmp_path / "label_audit.json").write_text(json.dumps(summary))
    text = " ".join(_label_section(tmp_path / "label_audit.json", tmp_path / "no-eval"))
    assert "the geometric mean of 2 fold models" in text and "(98.00 % right)" in text
    assert "`r224` at 224 px for 10 epochs and scoring at 272 px (97.90 % right alone)" in text
    assert "`r256` at 256 px for 20 epochs and scoring at 320 px (97.76 % right alone)" in text

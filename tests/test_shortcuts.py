"""The file-format shortcut audit: a rule fitted on Training files' sizes, and a model's accuracy
where the file agrees with the label and where it does not."""

import pandas as pd
import pytest

from brainlib import shortcuts


def manifest() -> pd.DataFrame:
    """Training: no-tumour files 300 px wide, tumour files 512 px; Testing: two tumours saved like the
    no-tumour files (conflicting), the rest as in Training."""
    rows = []
    for i in range(40):
        rows.append(("Training", f"Training/notumor/{i}.jpg", "notumor", 300, 280, "RGB"))
        rows.append(("Training", f"Training/glioma/{i}.jpg", "glioma", 512, 512, "L"))
    tests = [("notumor", 300)] * 6 + [("glioma", 512)] * 6 + [("meningioma", 300)] * 2
    for i, (label, width) in enumerate(tests):
        rows.append(("Testing", f"Testing/{label}/{i}.jpg", label, width, width, "RGB"))
    return pd.DataFrame(rows, columns=["split_on_disk", "path", "label", "width", "height", "mode"])


def predictions(m: pd.DataFrame, preds: list[str]) -> pd.DataFrame:
    test = m[m["split_on_disk"] == "Testing"].reset_index(drop=True)
    pred = test[["path", "label"]].assign(pred=preds)
    pred["file_says_notumor"] = shortcuts.file_says_no_tumour(m, pred["path"])
    return pred


def test_the_rule_is_fitted_on_training_files_and_says_no_tumour_for_their_size():
    m = manifest()
    said = predictions(m, ["notumor"] * 14)["file_says_notumor"].tolist()
    assert said == [True] * 6 + [False] * 6 + [True] * 2
    text = shortcuts.rule_text(shortcuts.fit_file_rule(m))  # width, height and mode all separate here
    assert "class: True" in text and any(name in text for name in shortcuts.FEATURES)


def test_a_model_that_follows_the_file_fails_only_on_conflicting_images():
    m = manifest()
    follows_file = ["notumor"] * 6 + ["glioma"] * 6 + ["notumor"] * 2  # both 300-px tumours called "no tumour"
    report = shortcuts.shortcut_report(predictions(m, follows_file))
    assert report["rule_tumour_vs_none_accuracy"] == pytest.approx(12 / 14)
    assert report["aligned"]["accuracy"] == 1.0 and report["aligned"]["n"] == 12
    assert report["conflicting"]["accuracy"] == 0.0 and report["conflicting"]["n"] == 2
    assert report["conflicting"]["ci95"][1] < 0.8  # Wilson interval of 0 of 2
    missed = report["tumour_called_none"]
    assert (missed["aligned"], missed["aligned_n"], missed["conflicting"], missed["conflicting_n"]) == (0, 6, 2, 2)
    assert 0 < missed["fisher_p"] < 0.05
    row = shortcuts.shortcut_table({"run": report}).iloc[0]
    assert row["conflicting_%"] == 0.0 and row["tumour→none conflicting"] == "2/2"


def test_a_model_that_reads_the_scan_scores_the_same_on_both_groups():
    m = manifest()
    right = m[m["split_on_disk"] == "Testing"]["label"].tolist()
    report = shortcuts.shortcut_report(predictions(m, right))
    assert report["aligned"]["accuracy"] == report["conflicting"]["accuracy"] == 1.0
    assert report["tumour_called_none"]["fisher_p"] == 1.0
    assert report["no_tumour_conflicting"]["n"] == 0 and report["no_tumour_conflicting"]["accuracy"] is None


def test_inside_the_tumour_classes_a_model_that_follows_the_file_errs_toward_the_files_type():
    """Training: gliomas saved as 8-bit grayscale, meningiomas as RGB; Testing: four gliomas saved as RGB,
    whose format points to meningioma."""
    rows = [
        ("Training", f"Training/{label}/{i}.jpg", label, width, width, mode)
        for i in range(40)
        for label, width, mode in (("glioma", 512, "L"), ("meningioma", 512, "RGB"), ("notumor", 300, "RGB"))
    ]
    tests = [("glioma", "L")] * 4 + [("glioma", "RGB")] * 4 + [("meningioma", "RGB")] * 4
    rows += [("Testing", f"Testing/{label}/{i}.jpg", label, 512, 512, mode) for i, (label, mode) in enumerate(tests)]
    m = pd.DataFrame(rows, columns=["split_on_disk", "path", "label", "width", "height", "mode"])
    pred = m[m["split_on_disk"] == "Testing"][["path", "label"]].reset_index(drop=True)
    pred["file_tumour_type"] = shortcuts.file_tumour_type(m, pred["path"])
    assert pred["file_tumour_type"].tolist() == ["glioma"] * 4 + ["meningioma"] * 8

    follows_file = shortcuts.tumour_type_report(pred.assign(pred=pred["file_tumour_type"]))
    assert follows_file["rule_accuracy"] == pytest.approx(8 / 12)
    assert follows_file["largest_class_share"] == pytest.approx(8 / 12)
    errors = follows_file["errors"]
    assert (errors["aligned"], errors["aligned_n"], errors["conflicting"], errors["conflicting_n"]) == (0, 8, 4, 4)
    assert errors["toward_file_type"] == 4 and errors["fisher_p"] < 0.05

    reads_scan = shortcuts.tumour_type_report(pred.assign(pred=pred["label"]))
    assert reads_scan["errors"]["conflicting"] == reads_scan["errors"]["toward_file_type"] == 0
    row = shortcuts.tumour_type_table({"run": {"tumour_type": follows_file}}).iloc[0]
    assert row["errors conflicting"] == "4/4" and row["conflicting_%"] == 0.0


def test_old_manifests_and_predictions_give_no_report_rather_than_an_error():
    m = manifest()
    assert shortcuts.file_says_no_tumour(m.drop(columns="mode"), m["path"]) is None
    assert shortcuts.file_tumour_type(m.drop(columns="mode"), m["path"]) is None
    assert shortcuts.shortcut_report(pd.DataFrame({"label": ["glioma"], "pred": ["glioma"]})) is None
    # a run that scores Testing alone has no Training files to fit a rule on (sklearn stopped with a traceback)
    testing = m[m["split_on_disk"] == "Testing"]
    assert shortcuts.file_says_no_tumour(testing, testing["path"]) is None
    assert shortcuts.file_tumour_type(testing, testing["path"]) is None


def test_evaluate_records_the_audit_and_the_command_reads_evaluated_folders(trained_run, tmp_path, capsys):
    from pathlib import Path

    from brainlib import evaluate
    from brainlib.cli import main
    from brainlib.loader import load_run_data

    pred, logits, extras = evaluate.predict_test(trained_run, load_run_data(trained_run), shifts=False)
    written = pd.read_csv(Path(trained_run.run_dir) / "predictions.csv")
    assert {"file_says_notumor", "file_tumour_type"} <= set(written.columns)
    assert set(written["file_tumour_type"]) <= {"glioma", "meningioma", "pituitary"}
    metrics = evaluate.compute_metrics(pred, logits, extras)
    assert 0 <= metrics["file_shortcut"]["rule_tumour_vs_none_accuracy"] <= 1
    assert 0 <= metrics["file_shortcut"]["tumour_type"]["rule_accuracy"] <= 1
    (tmp_path / "not_evaluated").mkdir()
    assert main(["shortcuts", str(trained_run.run_dir), str(tmp_path / "not_evaluated")]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "not_evaluated" in out
    assert "tumour-vs-none accuracy on the test images" in out and f"| {Path(trained_run.run_dir).name} " in out
    assert "Inside the tumour classes" in out

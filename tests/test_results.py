"""The front door's numbers: README's results table is what the committed metrics files say, and the
shift summary keeps its metrics.json form."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlib import results, robustness
from brainlib.config import CLASS_NAMES
from brainlib.errors import DataError, SettingsError

ROOT = Path(__file__).parents[1]


def test_readme_results_table_matches_the_committed_metrics_files():
    readme = (ROOT / "README.md").read_text()
    assert results.replace_block(readme, results.results_table()) == readme, (
        "README's table is stale: make readme-table"
    )


def test_the_table_carries_the_default_checkpoints_numbers():
    metrics = json.loads((ROOT / "checkpoints" / "efficientnet_lite0_robust.metrics.json").read_text())
    table = results.results_table()
    first_row = table.splitlines()[2]
    assert "efficientnet_lite0_robust.pt" in first_row and f"{100 * metrics['accuracy']:.2f} %" in first_row
    summary = robustness.summary_of(metrics)
    assert f"{100 * summary.middle_mean_accuracy:.2f} %" in first_row


def test_the_label_audit_sentence_follows_its_files(tmp_path, monkeypatch):
    audit = json.loads((ROOT / results.AUDIT_FILE).read_text())
    sentence = results._audit_sentence()
    assert f"flags {audit['n_flagged']} ({audit['n_flagged_testing']} in Testing)" in sentence
    assert f"{100 * audit['oof_accuracy']:.2f} % right" in sentence and "not read" not in sentence
    recipes = [m["recipe"] for m in audit["members"]] if "members" in audit else [audit["recipe"]]
    assert all(f"`{recipe}`" in sentence for recipe in recipes), "the sentence names the fold models' recipes"
    # an unread flag is counted as such
    audit_dir = (tmp_path / results.AUDIT_FILE).parent
    audit_dir.mkdir(parents=True)
    (tmp_path / results.AUDIT_FILE).write_text(json.dumps(audit))
    flags = pd.read_csv((ROOT / results.AUDIT_FILE).parent / "label_issues.csv")
    pd.concat([flags, flags.head(1).assign(path="Training/glioma/unread.jpg")]).to_csv(
        audit_dir / "label_issues.csv", index=False
    )
    (tmp_path / results.VERDICTS_FILE).write_text((ROOT / results.VERDICTS_FILE).read_text())
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    assert ", 1 not read " in results._audit_sentence()


def test_replace_block_needs_the_markers():
    with pytest.raises(DataError, match="results-table"):
        results.replace_block("no markers here", "x")
    text = f"a\n{results.START}\nold\n{results.END}\nb"
    assert results.replace_block(text, "new") == f"a\n{results.START}\nnew\n{results.END}\nb"


def test_shift_summary_round_trips_through_its_metrics_json_form():
    metrics = json.loads((ROOT / "checkpoints" / "efficientnet_lite0_robust.metrics.json").read_text())
    flat = metrics["shifts"]["summary"]
    summary = robustness.ShiftSummary.from_dict(flat)
    assert summary.as_dict() == flat and summary.all_severities
    assert set(summary.middle_min_coverage) == {"0.01", "0.05"}
    again = robustness.shift_summary(pd.DataFrame(metrics["shifts"]["table"])).as_dict()
    assert {k: v for k, v in again.items() if isinstance(v, float)} == pytest.approx(
        {k: v for k, v in flat.items() if isinstance(v, float)}
    )
    assert (again["middle_worst_shift"], again["severities"]) == (flat["middle_worst_shift"], flat["severities"])


def test_shift_summary_names_the_class_a_shift_takes_down_most():
    def row(shift, severity, recalls):
        return {
            "shift": shift,
            "severity": severity,
            "n": 40,
            "seen": True,
            "tumour_recall": 1.0,
            "accuracy": float(np.mean(recalls)),
        } | {f"recall_{c}": r for c, r in zip(CLASS_NAMES, recalls, strict=True)}

    table = pd.DataFrame(
        [
            {"shift": "clean", "severity": 0, "n": 40, "seen": None, "accuracy": 1.0, "tumour_recall": 1.0},
            row("a", 2, [0.9, 1.0, 1.0, 1.0]),
            row("b", 2, [1.0, 0.95, 0.95, 0.95]),  # the lower mean, but no class as low as a's glioma
            row("a", 3, [0.5, 1.0, 1.0, 1.0]),  # not the middle severity
        ]
    )
    summary = robustness.shift_summary(table)
    assert summary.middle_worst_shift == "b"
    assert (summary.middle_min_class_recall, summary.middle_min_class_recall_class) == (0.9, "glioma")
    assert summary.middle_min_class_recall_shift == "a"
    # a summary written before per-class recall was recorded still reads
    old = {k: v for k, v in summary.as_dict().items() if "class_recall" not in k}
    assert robustness.ShiftSummary.from_dict(old).middle_min_class_recall is None


@pytest.mark.parametrize(("text", "expected"), [("1,2,3", (1, 2, 3)), ("2", (2,)), ("", ()), (" 3 , 1", (3, 1))])
def test_severities_parse(text, expected):
    assert robustness.parse_severities(text) == expected


@pytest.mark.parametrize("text", ["4", "two", "1,,x"])
def test_bad_severities_are_one_line(text):
    with pytest.raises(SettingsError, match="1, 2 and/or 3"):
        robustness.parse_severities(text)


def test_error_table_lists_every_error_with_its_twin_and_probabilities(tmp_path):
    import numpy as np

    from brainlib.results import error_table

    logits = np.array([[4.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 2.0], [1.0, 0, 0, 0]])
    pd.DataFrame(
        {
            "path": [f"Testing/x/{i}.jpg" for i in range(4)],
            "label": ["glioma", "glioma", "notumor", "glioma"],
            "label_idx": [0, 0, 2, 0],
            "pred_idx": logits.argmax(1),
            "pred": ["glioma", "meningioma", "pituitary", "glioma"],
            "has_train_twin_exact": [False, True, False, False],
            "has_train_twin_near": [False, True, True, False],
        }
    ).to_csv(tmp_path / "predictions.csv", index=False)
    np.save(tmp_path / "test_logits.npy", logits)
    (tmp_path / "metrics.json").write_text(json.dumps({"temperature": 1.0}))
    table = error_table(tmp_path)
    assert list(table["path"]) == ["Testing/x/1.jpg", "Testing/x/2.jpg"]  # most confident first
    assert list(table["train_twin"]) == ["exact", "near"]
    assert (table["p_pred"] > table["p_label"]).all()

"""By-eye readings: one file, validated on reading, and the accuracy both ways it gives."""

import json
from pathlib import Path

import pandas as pd
import pytest

from brainlib import results
from brainlib.errors import DataError
from brainlib.verdicts import (
    VERDICT_COLUMNS,
    accuracy_both_ways,
    fill_verdict_columns,
    read_verdicts,
    with_verdicts,
)

ROOT = Path(__file__).parents[1]


def _write(tmp_path, rows) -> Path:
    path = tmp_path / "verdicts.csv"
    pd.DataFrame(rows, columns=list(VERDICT_COLUMNS)).to_csv(path, index=False)
    return path


PREDICTIONS = pd.DataFrame(
    {
        "path": ["Testing/a.jpg", "Testing/b.jpg", "Testing/c.jpg", "Testing/d.jpg"],
        "label": ["meningioma", "notumor", "glioma", "pituitary"],
        "pred": ["glioma", "notumor", "meningioma", "pituitary"],
    }
)


def test_a_label_read_as_wrong_counts_both_ways(tmp_path):
    verdicts = read_verdicts(
        _write(
            tmp_path,
            [
                ["Testing/a.jpg", "meningioma", "glioma", "label wrong", "intra-axial ring"],  # error -> right
                ["Testing/b.jpg", "notumor", "meningioma", "label wrong", "a dural mass"],  # right -> error
                ["Testing/c.jpg", "glioma", "", "model wrong", ""],
                ["Training/x.jpg", "pituitary", "notumor", "label wrong", "not on this split"],
            ],
        )
    )
    both = accuracy_both_ways(PREDICTIONS, verdicts)
    assert (both["errors_official"], both["accuracy_official"]) == (2, 0.5)
    assert both["labels_read_as_wrong"] == ["Testing/a.jpg", "Testing/b.jpg"]
    assert (both["errors_relabelled"], both["accuracy_relabelled"]) == (2, 0.5)
    assert both["n_read"] == 3
    filled = with_verdicts(PREDICTIONS, verdicts)
    assert filled["verdict"].tolist() == ["label wrong", "label wrong", "model wrong", ""]


def test_a_wrong_label_of_unknown_class_leaves_the_relabelled_count(tmp_path):
    """A "no tumour" image with a lesion of no class the reader can tell: not scorable once relabelled,
    and counted when the model still gives it the wrong label."""
    verdicts = read_verdicts(
        _write(
            tmp_path,
            [
                ["Testing/a.jpg", "meningioma", "glioma", "label wrong", "intra-axial ring"],  # error -> right
                ["Testing/b.jpg", "notumor", "", "label wrong, class unknown", "enhancing nodules"],  # right -> out
            ],
        )
    )
    both = accuracy_both_ways(PREDICTIONS, verdicts)
    assert both["labels_wrong_class_unknown"] == ["Testing/b.jpg"] and both["class_unknown_given_label_predicted"] == 1
    assert (both["n_images_relabelled"], both["errors_relabelled"]) == (3, 1)
    assert both["accuracy_relabelled"] == 2 / 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["Testing/a.jpg", "meningioma", "", "wrong-ish", ""], "not one of"),
        (["Testing/a.jpg", "meningeoma", "", "ambiguous", ""], "class names"),
        (["Testing/a.jpg", "meningioma", "", "label wrong", ""], "needs read_as"),
        (["Testing/a.jpg", "meningioma", "meningioma", "label wrong", ""], "needs read_as"),
        (["Testing/a.jpg", "notumor", "glioma", "label wrong, class unknown", ""], "leaves read_as empty"),
    ],
)
def test_a_bad_reading_is_refused_with_its_path(tmp_path, row, message):
    with pytest.raises(DataError, match=message) as err:
        read_verdicts(_write(tmp_path, [row]))
    assert "Testing/a.jpg" in str(err.value)


def test_a_reading_written_for_another_label_is_refused(tmp_path):
    verdicts = read_verdicts(_write(tmp_path, [["Testing/b.jpg", "glioma", "meningioma", "label wrong", ""]]))
    with pytest.raises(DataError, match="not the file's"):
        accuracy_both_ways(PREDICTIONS, verdicts)


def test_missing_file_or_column_is_one_line(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_verdicts(tmp_path / "none.csv")
    (tmp_path / "v.csv").write_text("path,verdict\nx,ambiguous\n")
    with pytest.raises(DataError, match="lacks the column"):
        read_verdicts(tmp_path / "v.csv")


def test_committed_readings_are_valid_and_the_generated_counts_follow_them():
    verdicts = read_verdicts(ROOT / results.VERDICTS_FILE)
    both = json.loads((ROOT / results.BOTH_WAYS_FILE).read_text())
    on_test = verdicts[(verdicts["verdict"] == "label wrong") & verdicts["path"].str.startswith("Testing/")]
    assert both["labels_read_as_wrong"] == sorted(on_test["path"]), "stale: make figures"
    errors = pd.read_csv(ROOT / "docs/figures/default_errors.csv")
    assert both["errors_official"] == len(errors)
    assert (errors["verdict"].fillna("") == with_verdicts(errors, verdicts)["verdict"]).all(), "stale: make figures"
    suspects = pd.read_csv(ROOT / "docs/label_audit/label_issues.csv")
    assert (suspects["verdict"].fillna("") == with_verdicts(suspects, verdicts)["verdict"]).all(), "stale: make figures"
    assert suspects[suspects["split_on_disk"] == "Testing"]["verdict"].notna().all(), "every Testing flag is read"


def test_every_audit_list_beside_the_readings_gets_their_verdicts(tmp_path):
    """The lists of the audit in the readings' folder and of those kept in folders below it are filled; a list
    written before lists had a verdict column, and other CSVs, are left as they were."""
    verdicts = read_verdicts(
        _write(tmp_path, [["Testing/a.jpg", "meningioma", "glioma", "label wrong", "intra-axial ring"]])
    )
    flags = pd.DataFrame({"path": ["Testing/a.jpg", "Testing/b.jpg"], "verdict": ["", "stale"]})
    (tmp_path / "other_recipe").mkdir()
    flags.to_csv(tmp_path / "label_issues.csv", index=False)
    flags.to_csv(tmp_path / "other_recipe" / "review.csv", index=False)
    (tmp_path / "other_recipe" / "scored_256px").mkdir()
    flags.to_csv(tmp_path / "other_recipe" / "scored_256px" / "label_issues.csv", index=False)
    flags.drop(columns="verdict").to_csv(tmp_path / "other_recipe" / "copies_of_flags.csv", index=False)
    flags.to_csv(tmp_path / "other_recipe" / "history.csv", index=False)
    written = fill_verdict_columns(tmp_path, verdicts)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "label_issues.csv",
        "other_recipe/review.csv",
        "other_recipe/scored_256px/label_issues.csv",
    ]
    for listed in written:
        assert pd.read_csv(listed, keep_default_na=False)["verdict"].tolist() == ["label wrong", ""]
    assert "verdict" not in pd.read_csv(tmp_path / "other_recipe" / "copies_of_flags.csv").columns
    history = pd.read_csv(tmp_path / "other_recipe" / "history.csv", keep_default_na=False)
    assert history["verdict"].tolist() == ["", "stale"]

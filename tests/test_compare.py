"""The comparison table is built from run folders' files."""

from brainlib import compare, evaluate
from brainlib.config import build_config, recipe_and_changes
from brainlib.loader import load_run_data


def test_compare_builds_a_row_per_evaluated_run_and_names_the_rest(trained_run, tmp_path, capsys):
    data = load_run_data(trained_run)
    metrics = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False))
    evaluate.write_metrics(metrics, trained_run.run_dir)
    (tmp_path / "not_evaluated").mkdir()
    table = compare.compare_runs([trained_run.run_dir, tmp_path / "not_evaluated"])
    assert "skipped 1 folder(s) without metrics.json: not_evaluated" in capsys.readouterr().out
    assert len(table) == 1
    row = table.iloc[0]
    assert row["test_acc_%"] == round(100 * metrics["accuracy"], 2) and row["params"] == 273_236
    assert row["recipe"].startswith("reference + ") and "batch_size=8" in row["recipe"]


def test_recipe_and_changes_names_the_closest_recipe_for_old_runs():
    assert recipe_and_changes({"augment": False}) == "seed_cnn_noaug"
    saved = build_config({}, {"recipe": "efficientnet_lite0", "image_size": 256}).__dict__
    assert recipe_and_changes(saved) == "efficientnet_lite0 + image_size=256"


def test_compare_pairs_each_run_with_the_first_on_the_same_images(trained_run, tmp_path, capsys):
    import shutil

    import pandas as pd

    from brainlib.cli import main

    data = load_run_data(trained_run)
    evaluate.write_metrics(
        evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False)), trained_run.run_dir
    )
    other = tmp_path / "other"
    shutil.copytree(trained_run.run_dir, other)
    pred = pd.read_csv(other / "predictions.csv")
    wrong = pred.index[pred["label_idx"] == pred["pred_idx"]][:3]  # break three right answers, fix none
    pred.loc[wrong, "pred_idx"] = (pred.loc[wrong, "label_idx"] + 1) % 4
    pred.sample(frac=1, random_state=0).to_csv(other / "predictions.csv", index=False)  # pairing is by path, not row
    table = compare.paired_table([trained_run.run_dir, other])
    row = table[table["images"] == "all"].iloc[0]
    assert row["n"] == len(pred) and row["only_run_right"] == 0 and row["only_vs_right"] == 3
    assert row["diff_pts"] == round(-300 / len(pred), 2) and row["mcnemar_p"] == 0.25  # 2 * 0.5**3
    assert main(["compare", trained_run.run_dir, str(other)]) == 0
    assert "McNemar" in capsys.readouterr().out

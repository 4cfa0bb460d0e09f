"""The comparison table is built from run folders' files."""

from pathlib import Path

import torch

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
    # the cost beside the gain: the scored file's size and the clean test pass's throughput
    state = torch.load(metrics["checkpoint"], weights_only=True)
    weights_mb = sum(t.numel() * t.element_size() for t in state["model_state"].values()) / 2**20
    assert row["weights_MB"] == round(weights_mb, 1) and row["score_device"] == "cpu"
    assert weights_mb < Path(metrics["checkpoint"]).stat().st_size / 2**20  # a training checkpoint holds more
    assert metrics["scoring"]["images_per_s"] > 0 and row["score_img/s"] == round(metrics["scoring"]["images_per_s"])


def test_compare_leaves_cost_cells_empty_for_metrics_written_before_they_were_measured(trained_run):
    data = load_run_data(trained_run)
    metrics = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False))
    del metrics["scoring"]
    evaluate.write_metrics(metrics, trained_run.run_dir)
    row = compare.compare_runs([trained_run.run_dir]).iloc[0]
    assert row[["weights_MB", "score_img/s", "score_device"]].isna().all()


def test_recipe_and_changes_names_the_closest_recipe_for_old_runs():
    assert recipe_and_changes({"augment": False}) == "seed_cnn_noaug"
    saved = build_config({}, {"recipe": "efficientnet_lite0", "image_size": 256}).__dict__
    assert recipe_and_changes(saved) == "efficientnet_lite0 + image_size=256"


def test_a_run_that_scores_at_another_side_than_its_recipe_says_which_side():
    # saved before the recipe scored at a larger side: it scores at its training side, and says so
    old = build_config({}, {"recipe": "efficientnet_lite0_robust", "image_size": 256}).__dict__ | {"test_image_size": 0}
    assert recipe_and_changes(old) == "efficientnet_lite0_robust + image_size=256 test_image_size=256"
    now = build_config({}, {"recipe": "efficientnet_lite0_robust"}).__dict__
    assert now["test_image_size"] == 272 and recipe_and_changes(now) == "efficientnet_lite0_robust"
    # a side left to follow image_size and the same side written out are one recipe for the seed summary
    implicit = build_config({}, {"recipe": "efficientnet_lite0", "image_size": 256}).__dict__
    explicit = implicit | {"test_image_size": 256}
    assert compare.recipe_without_seed(implicit)[0] == compare.recipe_without_seed(explicit)[0]


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


def test_seeds_of_one_recipe_are_summarised_by_their_settings_not_their_names():
    import pandas as pd

    plain = build_config({}, {"recipe": "efficientnet_lite0_robust", "seed": 1, "split_seed": 42}).__dict__
    # weights exported from a weight-averaged run with the average off: the plain recipe's settings
    exported = build_config({}, {"recipe": "efficientnet_lite0_robust_ema", "seed": 42, "ema_decay": 0.0}).__dict__
    averaged = build_config({}, {"recipe": "efficientnet_lite0_robust_ema", "seed": 42}).__dict__
    other_size = build_config({}, {"recipe": "efficientnet_lite0_robust", "seed": 2, "image_size": 256}).__dict__
    keys = [compare.recipe_without_seed(s) for s in (plain, exported, averaged, other_size)]
    assert keys[0][0] == keys[1][0] and len({k for k, _ in keys}) == 3
    assert keys[0][1] == "efficientnet_lite0_robust" and keys[3][1] == "efficientnet_lite0_robust + image_size=256"

    rows = [(1, 98.0, 0), (42, 99.0, 1), (2, 97.0, 0), (42, 50.0, 1)]  # the second run of seed 42 does not count
    table = pd.DataFrame(
        {
            "run": ["a", "b", "c", "d"],
            "seed": [seed for seed, _, _ in rows],
            "test_acc_%": [acc for _, acc, _ in rows],
            "_recipe_key": [keys[k][0] for _, _, k in rows],
            "_recipe_label": [keys[k][1] for _, _, k in rows],
        }
    )
    table.loc[len(table)] = ["e", 7, 90.0, keys[2][0], keys[2][1]]  # one seed of another recipe: no summary row
    summary = compare.seed_summary(table)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["recipe"] == "efficientnet_lite0_robust" and row["seeds"] == "1, 2, 42"
    assert row["test %"] == "98.00 ± 1.00 (97.00–99.00)"
    assert "shift mean %" not in summary  # numbers the runs do not have are left out
    assert row["not counted"] == "d (seed 42 again)"  # the second run of seed 42 is named, not dropped silently
    assert "not counted" not in compare.seed_summary(table.drop(index=3))

    # leakage-free accuracy is averaged only over seeds scored on one leakage-free subset
    table["leakage_free_%"] = [97.0, 98.0, 96.0, 10.0, 90.0]
    table["_n_leakage_free"] = [316, 316, 316, 316, 316]
    assert compare.seed_summary(table).iloc[0]["leakage-free %"] == "97.00 ± 1.00 (96.00–98.00)"
    table.loc[1, "_n_leakage_free"] = 814
    assert compare.seed_summary(table).iloc[0]["leakage-free %"] == "subsets differ (n = 316, 814)"


def test_an_ensemble_is_described_by_its_members_and_never_counted_as_a_seed():
    seeds = [build_config({}, {"recipe": "efficientnet_lite0_robust_256", "seed": s}).__dict__ for s in (42, 43, 44)]
    plain = build_config({}, {"recipe": "efficientnet_lite0"}).__dict__
    text = compare.ensemble_recipe(seeds + [plain], "efficientnet_lite0+efficientnet_lite0+efficientnet_lite0+flip")
    assert text == "ensemble: 3 × efficientnet_lite0_robust_256; 1 × efficientnet_lite0 + flip"
    assert "|" not in text  # a markdown table cell


def test_a_run_scored_in_another_folder_finds_its_training_summary_beside_its_checkpoint(tmp_path):
    import json

    trained, scored = tmp_path / "trained", tmp_path / "eval"
    (trained / "checkpoints").mkdir(parents=True)
    scored.mkdir()
    (trained / "train_summary.json").write_text(json.dumps({"train_seconds": 12.0}))
    assert compare.training_summary(scored, trained / "checkpoints" / "best.pt") == {"train_seconds": 12.0}
    assert compare.training_summary(scored, trained / "trained_last.pt") == {"train_seconds": 12.0}
    assert compare.training_summary(scored, None) == {}
    (scored / "train_summary.json").write_text(json.dumps({"train_seconds": 3.0}))  # the folder's own first
    assert compare.training_summary(scored, trained / "checkpoints" / "best.pt") == {"train_seconds": 3.0}


def test_a_new_default_needs_strictly_more_validation_images_right_than_the_incumbent():
    import pandas as pd
    import pytest

    from brainlib.errors import BrainlibError

    def scores(*rows):
        return pd.DataFrame(rows, columns=["name", "right", "n", "nll", "passes"])

    # a tie in images right keeps the incumbent, even with a lower log-loss
    tie = compare.choose_on_validation(scores(("old", 564, 572, 0.06, 1), ("new", 564, 572, 0.05, 1)), "old")
    assert not tie["adopt"] and tie["choice"] == "old" and tie["ranking"] == ["new", "old"]
    # one image more wins; among equals the lower log-loss, then the cheaper one
    table = scores(
        ("old", 564, 572, 0.06, 1),
        ("ens", 565, 572, 0.05, 3),
        ("single", 565, 572, 0.05, 1),
        ("lite2", 565, 572, 0.07, 1),
    )
    won = compare.choose_on_validation(table, "old")
    assert won["adopt"] and won["choice"] == "single" and won["candidates"] == 3
    assert won["ranking"] == ["single", "ens", "lite2", "old"]
    assert "565 of 572" in won["reason"] and "564" in won["reason"]
    with pytest.raises(BrainlibError, match="not one carve"):
        compare.choose_on_validation(scores(("old", 564, 572, 0.06, 1), ("new", 500, 575, 0.05, 1)), "old")
    with pytest.raises(BrainlibError, match="no validation score"):
        compare.choose_on_validation(scores(("new", 564, 572, 0.05, 1)), "old")


def test_a_checkpoint_replaced_at_the_scored_path_is_not_taken_for_the_scored_one(tmp_path):
    """A committed default replaced in place: the old evaluation folder's metrics name the path, but the
    file there was selected at another epoch with another temperature, so its settings are not used."""
    from brainlib.checkpoint import save_checkpoint

    path = tmp_path / "default.pt"
    weights = {"model_name": "seed_cnn", "class_names": ["a"], "model_state": {}}
    save_checkpoint({**weights, "epoch": 14, "temperature": 0.40, "config": {"seed": 2}}, path)
    assert compare.scored_checkpoint({"checkpoint": str(path), "epoch": 14, "temperature": 0.40})[0]["epoch"] == 14
    assert compare.scored_checkpoint({"checkpoint": str(path), "epoch": 15, "temperature": 0.59}) == ({}, None)
    assert compare.scored_checkpoint({"checkpoint": str(path), "epoch": 14, "temperature": 0.59}) == ({}, None)
    # metrics written before they recorded the epoch, and checkpoints without a temperature, still match
    assert compare.scored_checkpoint({"checkpoint": str(path)})[1] == path
    save_checkpoint({**weights, "epoch": 14, "config": {}}, path)
    assert compare.scored_checkpoint({"checkpoint": str(path), "epoch": 14, "temperature": 1.3})[1] == path

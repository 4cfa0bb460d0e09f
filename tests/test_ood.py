"""Out-of-distribution detection: the scores, the threshold's stored form, the checkpoint fields after
training and after `calibrate`, and what `predict` and `evaluate` do with a flagged input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from brainlib import evaluate, ood
from brainlib.checkpoint import load_checkpoint, save_checkpoint
from brainlib.cli import main
from brainlib.loader import load_run_data


def _clusters(n=400, d=32, shift=6.0, seed=0):
    """Four Gaussian classes (the same centres for every seed) and a far cluster."""
    centres = torch.randn(4, d, generator=torch.Generator().manual_seed(123)) * 3
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    inside = centres[labels] + torch.randn(n, d, generator=gen)
    outside = torch.randn(n // 4, d, generator=gen) + shift
    return inside, labels, outside


@pytest.mark.parametrize("kind", ["mahalanobis", "relative_mahalanobis"])
def test_feature_scores_separate_a_far_cluster_and_the_threshold_keeps_one_percent(kind):
    train, labels, far = _clusters()
    stats = ood.fit(train, labels, 4, components=16)
    val, val_labels, _ = _clusters(seed=1)
    logits = torch.zeros(len(val), 4)
    val_scores = ood.score(stats, val, logits, kind)
    stats = ood.with_threshold(stats, kind, val_scores)
    assert (ood.flagged(stats, val_scores)).mean() <= 0.01
    far_scores = ood.score(stats, far, torch.zeros(len(far), 4), kind)
    assert ood.detection_auroc(val_scores, far_scores) > 0.99 and ood.flagged(stats, far_scores).mean() > 0.9


def test_energy_is_lower_for_confident_logits():
    confident = torch.tensor([[12.0, 0, 0, 0]])
    flat = torch.zeros(1, 4)
    assert (
        ood.score({}, torch.zeros(1, 1), confident, "energy")[0] < ood.score({}, torch.zeros(1, 1), flat, "energy")[0]
    )
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood.score(
            {
                "centre": torch.zeros(1),
                "projection": torch.eye(1),
                "class_means": torch.zeros(1, 1),
                "precision": torch.eye(1),
            },
            torch.zeros(1, 1),
            flat,
            "knn",
        )


def test_training_stores_the_detector_as_plain_data(trained_run):
    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")  # weights_only=True
    stats = state["ood"]
    assert stats["score"] == ood.DEFAULT_SCORE and stats["false_alarm_rate"] == ood.FALSE_ALARM_RATE
    assert isinstance(stats["threshold"], float) and all(
        isinstance(stats[k], torch.Tensor) for k in ("centre", "projection", "precision")
    )
    manifest = load_run_data(trained_run).manifest
    assert (
        stats["n_fit"] == (manifest["split"] == "train").sum()
        and stats["n_threshold"] == (manifest["split"] == "val").sum()
    )


def test_calibrate_adds_the_detector_to_a_checkpoint_without_one(trained_run, tmp_path):
    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")
    old = tmp_path / "old.pt"
    save_checkpoint({k: v for k, v in state.items() if k != "ood"}, old)
    out = tmp_path / "new.pt"
    assert main(["calibrate", "--checkpoint", str(old), "--out", str(out), "--run-dir", trained_run.run_dir]) == 0
    new = load_checkpoint(out)["ood"]
    assert new["threshold"] == pytest.approx(state["ood"]["threshold"], rel=1e-4)  # same splits, same weights


def _with_threshold(trained_run, tmp_path, threshold: float):
    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")
    path = tmp_path / f"t{threshold}.pt"
    save_checkpoint(state | {"ood": state["ood"] | {"threshold": threshold}}, path)
    return str(path)


def test_predict_gives_no_class_to_a_flagged_input_unless_asked(trained_run, tmp_path, capsys):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise)
    strict = _with_threshold(trained_run, tmp_path, float("-inf"))  # everything is out of distribution
    assert main(["predict", str(noise), "--checkpoint", strict, "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["out_of_distribution"] is True and result["class"] is None and "probabilities" not in result
    assert isinstance(result["ood_score"], float) and "out of distribution" in result["reason"]
    assert main(["predict", str(noise), "--checkpoint", strict]) == 1
    assert "noise.png: no class: out of distribution: OOD score" in capsys.readouterr().out
    assert main(["predict", str(noise), "--checkpoint", strict, "--allow-ood"]) == 0  # asked for: answered, marked
    assert "[out of distribution: shown because of --allow-ood]" in capsys.readouterr().out
    lenient = _with_threshold(trained_run, tmp_path, float("inf"))
    assert main(["predict", str(noise), "--checkpoint", lenient, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["out_of_distribution"] is False and result["class"] is not None


def test_evaluate_reports_false_alarms_on_test_and_under_every_shift(trained_run):
    pred, logits, extras = evaluate.predict_test(trained_run, load_run_data(trained_run), shift_severities=(2,))
    metrics = evaluate.compute_metrics(pred, logits, extras)
    summary = metrics["ood"]
    assert summary["score"] == ood.DEFAULT_SCORE and 0 <= summary["test_false_alarm_rate"] <= 1
    assert summary["test_false_alarm_rate"] == pytest.approx(pred["out_of_distribution"].mean())
    assert all(0 <= row["ood_flagged"] <= 1 for row in metrics["shifts"]["table"])


def test_the_ood_report_measures_every_score_on_every_family(trained_run, tmp_path):
    from brainlib.checkpoint import load_for_inference
    from brainlib.ood_suite import HELD_OUT, TUNING, measure, write_report

    net = load_for_inference(f"{trained_run.run_dir}/checkpoints/best.pt")
    result = measure(net, trained_run, load_run_data(trained_run), "cpu", shift_sample=0)
    summary = result["summary"]
    assert set(summary["score"]) == set(ood.SCORES) and result["chosen"] in ood.SCORES
    assert set(TUNING + HELD_OUT) <= set(summary["family"]) and "test_clean" in set(summary["family"])
    assert result["thresholds"][ood.DEFAULT_SCORE] == pytest.approx(
        net.ood["threshold"], rel=1e-4
    )  # the same fit as training's
    write_report(result, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["chosen"] == result["chosen"]


def test_the_ood_report_measures_the_detector_the_checkpoint_carries(trained_run):
    """Not a refit on today's splits: a checkpoint whose threshold differs from what its validation split
    would give now (as after a re-carve) is reported with its own threshold and statistics."""
    import dataclasses

    from brainlib.checkpoint import load_for_inference
    from brainlib.ood_suite import measure

    net = load_for_inference(f"{trained_run.run_dir}/checkpoints/best.pt")
    moved = dataclasses.replace(net, ood=net.ood | {"threshold": 0.5 * net.ood["threshold"]})
    result = measure(moved, trained_run, load_run_data(trained_run), "cpu", shift_sample=0)
    kind = moved.ood["score"]
    assert result["thresholds"][kind] == moved.ood["threshold"]
    assert result["detector"]["from"] == "checkpoint" and result["detector"]["n_fit"] == net.ood["n_fit"]
    clean = result["scores"].loc[result["scores"]["family"] == "test_clean", kind]
    summary = result["summary"]
    row = summary[(summary["score"] == kind) & (summary["family"] == "test_clean")].iloc[0]
    assert row["flagged"] == pytest.approx(float((clean > moved.ood["threshold"]).mean()))

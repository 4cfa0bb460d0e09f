"""evaluate: stable metrics from one set of test predictions, calibration without touching the
checkpoint, and a checkpoint scored at its own input size and split."""

import contextlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlib import calibration, evaluate, train
from brainlib.checkpoint import load_checkpoint
from brainlib.cli import main
from brainlib.config import CLASS_NAMES
from brainlib.loader import load_run_data
from brainlib.shifts import SHIFTS


def test_evaluate_writes_stable_metrics_and_calibrates(trained_run, tmp_path):
    data = load_run_data(trained_run)
    pred, logits, extras = evaluate.predict_test(trained_run, data)
    metrics = evaluate.compute_metrics(pred, logits, extras)
    path = evaluate.write_metrics(metrics, trained_run.run_dir)
    saved = json.loads(path.read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "per_class",
        "ece",
        "roc_auc",
        "accuracy_leakage_free",
        "n_test",
        "n_leakage_free",
        "model",
        "checkpoint",
    ):
        assert key in saved
    assert set(saved["per_class"]["glioma"]) == {"precision", "recall", "f1", "support"}
    assert saved["n_test"] == 13 and saved["n_leakage_free"] == 12  # the fixture's one twin is excluded
    assert load_checkpoint(extras["checkpoint"])["temperature"] == pytest.approx(extras["temperature"])
    shift_rows = pd.DataFrame(saved["shifts"]["table"])
    assert len(shift_rows) == 1 + 3 * len(SHIFTS) and set(shift_rows["shift"]) == {"clean", *SHIFTS}
    assert saved["shifts"]["summary"]["n_images"] == 13
    assert np.isclose(pred[[f"p_{c}" for c in CLASS_NAMES]].sum(1), 1, atol=1e-4).all()
    # every headline number has a 95 % bootstrap interval around it
    intervals = saved["intervals"]
    for key in ("accuracy", "accuracy_leakage_free", "macro_f1", "ece", *(f"recall_{c}" for c in CLASS_NAMES)):
        low, high = intervals[key]
        assert 0 <= low <= high <= 1, key
    assert intervals["accuracy"][0] <= saved["accuracy"] <= intervals["accuracy"][1]
    # prediction sets: the checkpoint's thresholds, coverage on test and under every shift
    sets = saved["conformal"]["sets"]
    assert saved["conformal"]["source"] == "checkpoint" and set(sets) == {"0.01", "0.05"}
    assert sets["0.01"]["test"]["n"] == 13 and sets["0.01"]["leakage_free"]["n"] == 12
    assert sets["0.01"]["test"]["mean_set_size"] >= sets["0.05"]["test"]["mean_set_size"] >= 1
    per_class = sets["0.01"]["per_class"]
    assert set(per_class) == set(CLASS_NAMES) and all(0 <= c <= 1 for c in per_class.values())
    counts = pred["label_idx"].value_counts()  # marginal coverage is the class-weighted mean of these
    weighted = sum(per_class[name] * counts.get(i, 0) for i, name in enumerate(CLASS_NAMES)) / counts.sum()
    assert weighted == pytest.approx(sets["0.01"]["test"]["coverage"])
    assert shift_rows["coverage_0.01"].between(0, 1).all() and (shift_rows["set_size_0.01"] >= 1).all()


def test_ece_of_a_perfectly_calibrated_toy_is_small_and_of_overconfidence_large():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1, 20000)
    assert calibration.expected_calibration_error(conf, rng.uniform(size=conf.size) < conf) < 0.02
    assert calibration.expected_calibration_error(np.full(1000, 0.99), np.arange(1000) < 500) == pytest.approx(0.49)


def test_evaluate_cli_prepares_a_fresh_run_folder(trained_run, fixture_root, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    shutil.copy(f"{trained_run.run_dir}/checkpoints/best.pt", ckpt)
    run = tmp_path / "eval"
    assert _evaluate_cli(str(ckpt), run, fixture_root) == 0
    assert json.loads((run / "metrics.json").read_text())["n_test"] == 13
    assert "meningioma" in capsys.readouterr().out


def test_evaluate_cli_scores_a_checkpoint_at_its_own_input_size_and_split(prepared_run, fixture_root, tmp_path):
    cfg = prepared_run.replace(model="resnet18_scratch", image_size=64, epochs=1, seed=7)  # seed_cnn is fixed to 224
    train.train(cfg, progress=False)
    own, _, _ = evaluate.predict_test(cfg, load_run_data(cfg), shifts=False)
    run = tmp_path / "eval"
    ckpt = f"{cfg.run_dir}/checkpoints/best.pt"
    assert _evaluate_cli(ckpt, run, fixture_root) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["image_size"], saved["seed"], saved["run_dir"]) == (64, 7, str(run))
    fresh = pd.read_csv(run / "predictions.csv")
    assert (fresh["pred_idx"].to_numpy() == own["pred_idx"].to_numpy()).all()


def test_evaluation_never_rewrites_the_checkpoint(trained_run, tmp_path):
    """An old checkpoint without a temperature is calibrated on val in memory; the file stays as it was."""
    from brainlib.checkpoint import save_checkpoint

    state = load_checkpoint(f"{trained_run.run_dir}/checkpoints/best.pt")
    del state["temperature"], state["conformal"]
    old = save_checkpoint(state, tmp_path / "old.pt")
    before = old.read_bytes()
    _, _, extras = evaluate.predict_test(trained_run, load_run_data(trained_run), old, shifts=False)
    assert extras["temperature"] > 0 and old.read_bytes() == before
    assert extras["conformal"]["source"].startswith("validation split") and extras["conformal"]["n_calibration"] > 0


def _evaluate_cli(checkpoint, run, data) -> int:
    return main(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--run-dir",
            str(run),
            "--data-dir",
            str(data),
            "--num-threads",
            "1",
        ]
    )


def test_shift_suite_reuses_logits_of_the_same_weights_and_pixels(trained_run, monkeypatch):
    from brainlib import robustness, shifts
    from brainlib.checkpoint import best_checkpoint, load_checkpoint, load_for_inference, save_checkpoint

    data = load_run_data(trained_run)
    net = load_for_inference(best_checkpoint(trained_run.run_dir))
    first = robustness.shift_table(trained_run, data, net, "cpu", severities=(2,))
    assert len(list(robustness.shift_logits_dir(trained_run).glob("*.npz"))) == 1 + len(SHIFTS)
    # per-class recalls, weighted by the classes' counts, give each row's accuracy back
    labels = data.manifest["label_idx"].to_numpy()[data.rows("test")]
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    recalls = first[[f"recall_{c}" for c in CLASS_NAMES]].to_numpy()
    assert np.allclose(recalls @ counts / counts.sum(), first["accuracy"])

    # transforms prepared one pair ahead: the same table, and every transform in the one host thread, one at a
    # time (each holds the libraries' thread counts for its pool), the caller's thread count as it was
    shutil.rmtree(robustness.shift_logits_dir(trained_run))
    holders, active, hold = [], [], shifts.library_threads

    @contextlib.contextmanager
    def watched(n):
        active.append(n)
        holders.append((threading.current_thread().name, len(active)))
        try:
            with hold(n):
                yield
        finally:
            active.pop()

    monkeypatch.setattr(shifts, "library_threads", watched)
    threads = torch.get_num_threads()
    assert robustness.shift_table(trained_run, data, net, "cpu", severities=(2,), prefetch=True).equals(first)
    assert len(holders) == sum(not s.batched for s in SHIFTS.values())
    assert all(name.startswith("shift") and at_once == 1 for name, at_once in holders), holders
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(shifts, "library_threads", hold)

    calls = []
    monkeypatch.setattr(shifts.Shift, "__call__", lambda self, images, severity: calls.append(self.name) or images)
    again = robustness.shift_table(trained_run, data, net, "cpu", severities=(2,))
    assert calls == [] and again.equals(first)  # nothing transformed or scored again

    # other weights (a checkpoint with one tensor changed): scored afresh (the stub transform returns the clean images)
    state = load_checkpoint(best_checkpoint(trained_run.run_dir))
    name = next(iter(state["model_state"]))
    state["model_state"][name] = state["model_state"][name] + 0.5
    net = load_for_inference(save_checkpoint(state, Path(trained_run.run_dir) / "other.pt"))
    other = robustness.shift_table(trained_run, data, net, "cpu", severities=(2,))
    assert len(calls) == len(SHIFTS)
    assert (other.loc[other["shift"] != "clean", "accuracy"] == other.loc[0, "accuracy"]).all()

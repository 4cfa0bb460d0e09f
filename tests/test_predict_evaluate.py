import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainlib import evaluate, train
from brainlib.cli import main
from brainlib.config import CLASS_NAMES


@pytest.fixture
def trained_run(prepared_run):
    train.train(prepared_run.replace(epochs=1), progress=False)
    return prepared_run


def test_predict_cli_handles_every_mode_and_reports_bad_files(trained_run, fixture_root, tmp_path, capsys):
    gray = Image.open(next((fixture_root / "Testing" / "glioma").glob("*.jpg"))).convert("L")
    files = {
        "gray.jpg": lambda p: gray.save(p),
        "rgba.png": lambda p: gray.convert("RGBA").save(p),
        "palette.png": lambda p: gray.convert("P").save(p),
        "sixteen.png": lambda p: Image.fromarray(np.asarray(gray).astype(np.uint16) * 200).save(p),
        "large.jpg": lambda p: gray.resize((8000, 8000)).save(p, quality=50),
        "text.jpg": lambda p: p.write_text("hello"),
    }
    for name, make in files.items():
        make(tmp_path / name)
    args = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.jpg")]
    ckpt = f"{trained_run.run_dir}/checkpoints/best.pt"
    rc = main(["predict", *args, "--checkpoint", ckpt, "--json", "--cam", str(tmp_path / "cams")])
    out = capsys.readouterr()
    assert rc == 1  # some inputs were bad ...
    results = {r["path"].split("/")[-1]: r for r in json.loads(out.out)}
    for name in ("gray.jpg", "rgba.png", "palette.png", "sixteen.png", "large.jpg"):  # ... the rest still predicted
        assert results[name]["class"] in CLASS_NAMES
        assert sum(results[name]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert (tmp_path / "cams" / f"{name.split('.')[0]}_gradcam.png").exists()
    assert "not a readable image" in results["text.jpg"]["error"]
    assert results["missing.jpg"]["error"] == "file not found"
    assert "missing.jpg: file not found" in out.err


def test_predict_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path, fixture_root, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["predict", str(next(fixture_root.rglob("*.jpg"))), "--checkpoint", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "bad.pt" in err and "\n" not in err


def test_evaluate_writes_stable_metrics_and_calibrates(trained_run, tmp_path):
    data = train.load_run_data(trained_run)
    pred, extras = evaluate.predict_test(trained_run, data)
    metrics = evaluate.compute_metrics(pred, extras)
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
    assert train.load_checkpoint(extras["checkpoint"])["temperature"] == pytest.approx(extras["temperature"])
    assert set(saved["accuracy_under_shift"]) == set(evaluate.SHIFTS)
    assert np.isclose(pred[[f"p_{c}" for c in CLASS_NAMES]].sum(1), 1, atol=1e-4).all()


def test_temperature_scaling_recovers_a_known_temperature():
    import torch

    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 4, generator=gen) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert evaluate.fit_temperature(true_logits * 3, labels) == pytest.approx(3, rel=0.1)


def test_ece_of_a_perfectly_calibrated_toy_is_small_and_of_overconfidence_large():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1, 20000)
    assert evaluate.expected_calibration_error(conf, rng.uniform(size=conf.size) < conf) < 0.02
    assert evaluate.expected_calibration_error(np.full(1000, 0.99), np.arange(1000) < 500) == pytest.approx(0.49)


def test_evaluate_cli_prepares_a_fresh_run_folder(trained_run, fixture_root, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    shutil.copy(f"{trained_run.run_dir}/checkpoints/best.pt", ckpt)
    run = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--run-dir", str(run), "--data-dir", str(fixture_root), "--num-threads", "1"]) == 0
    assert json.loads((run / "metrics.json").read_text())["n_test"] == 13
    assert "meningioma" in capsys.readouterr().out


def test_exported_checkpoint_is_small_and_predicts_the_same(trained_run, tmp_path, fixture_root):
    src = f"{trained_run.run_dir}/checkpoints/best.pt"
    assert main(["export", src, str(tmp_path / "small.pt")]) == 0
    small = train.load_checkpoint(tmp_path / "small.pt")
    assert "optimizer_state" not in small and small["model_name"] == "seed_cnn"
    assert (tmp_path / "small.pt").stat().st_size < 0.5 * (tmp_path / ".." / src).resolve().stat().st_size
    from brainlib.predict import predict_images

    image = [str(next(fixture_root.rglob("*.jpg")))]
    assert predict_images(image, src)[0]["probabilities"] == predict_images(image, tmp_path / "small.pt")[0]["probabilities"]


def test_compare_builds_a_row_per_evaluated_run_and_names_the_rest(trained_run, tmp_path, capsys):
    data = train.load_run_data(trained_run)
    metrics = evaluate.compute_metrics(*evaluate.predict_test(trained_run, data, shifts=False))
    evaluate.write_metrics(metrics, trained_run.run_dir)
    (tmp_path / "not_evaluated").mkdir()
    table = evaluate.compare_runs([trained_run.run_dir, tmp_path / "not_evaluated"])
    assert "skipped 1 folder(s) without metrics.json: not_evaluated" in capsys.readouterr().out
    assert len(table) == 1
    row = table.iloc[0]
    assert row["test_acc_%"] == round(100 * metrics["accuracy"], 2) and row["params"] == 273_236
    assert row["recipe"].startswith("reference + ") and "batch_size=8" in row["recipe"]


def test_recipe_and_changes_names_the_closest_recipe_for_old_runs():
    from brainlib.config import build_config

    assert evaluate.recipe_and_changes({"augment": False}) == "seed_cnn_noaug"
    saved = build_config({}, {"recipe": "efficientnet_lite0", "image_size": 256}).__dict__
    assert evaluate.recipe_and_changes(saved) == "efficientnet_lite0 + image_size=256"


def test_evaluate_cli_scores_a_checkpoint_at_its_own_input_size_and_split(prepared_run, fixture_root, tmp_path):
    cfg = prepared_run.replace(model="resnet18_scratch", image_size=64, epochs=1, seed=7)  # seed_cnn is fixed to 224
    train.train(cfg, progress=False)
    own, _ = evaluate.predict_test(cfg, train.load_run_data(cfg), shifts=False)
    run = tmp_path / "eval"
    ckpt = f"{cfg.run_dir}/checkpoints/best.pt"
    assert main(["evaluate", "--checkpoint", ckpt, "--run-dir", str(run), "--data-dir", str(fixture_root), "--num-threads", "1"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["image_size"], saved["seed"], saved["run_dir"]) == (64, 7, str(run))
    fresh = pd.read_csv(run / "predictions.csv")
    assert (fresh["pred_idx"].to_numpy() == own["pred_idx"].to_numpy()).all()
